"""Data sets for the training engine: toy 2-D problems, digits, CIFAR-10/100 and ImageNet.

One entry point, :func:`build_datasets`, returns a :class:`DataBundle` holding the train, test
and (optional) validation sets plus any robustness evaluation sets. Every data set yields
``(x, y)`` with ``y`` a class index; wrap one in :class:`IndexedDataset` to get
``(x, y, index)`` for per-example bookkeeping (the forgetting tracker).

Randomness is seeded and split into independent streams, so changing ``subset`` does not
change which labels get flipped by ``label_noise`` for reasons other than the subset itself,
and the same arguments always give the same data. The toy problems and the digits train/test
split are fixed data sets (like CIFAR's): ``seed`` only drives the choices this module makes
on top of them (subset, validation split, label noise).

Example::

    bundle = build_datasets("digits", label_noise=0.2, seed=0)
    x, y = bundle.train[0]            # x: (1, 8, 8) float in [0, 1], y: int in [0, 10)
    bundle.train.flipped_mask.sum()   # 269 of the 1,347 training labels were flipped
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, TensorDataset

from .config import ConfigError
from .errors import UserInputError

__all__ = [
    "DATASETS",
    "DataBundle",
    "DatasetNotFoundError",
    "InMemoryDataset",
    "IndexedDataset",
    "LabeledView",
    "build_datasets",
    "class_mask_for",
    "make_blobs",
    "make_moons",
    "make_spirals",
    "symmetric_label_noise",
]

DATASETS = ("moons", "spirals", "blobs", "digits", "cifar10", "cifar100", "imagenet")

_TOY = ("moons", "spirals", "blobs")
_TOY_TRAIN_SIZE = 1000
_TOY_TEST_SIZE = 1000
_DIGITS_TEST_SIZE = 450

_CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

# Independent random streams per decision; see _generator.
_SALT_SUBSET_TRAIN, _SALT_SUBSET_TEST, _SALT_VAL, _SALT_NOISE, _SALT_SUBSET_EVAL = 1, 2, 3, 4, 5
_FIXED_DATA_SEED = 20240607  # the toy problems and the digits split never change with `seed`


class DatasetNotFoundError(UserInputError, FileNotFoundError):
    """A data set's files are missing; the message says where we looked and how to get them."""


# --------------------------------------------------------------------------------------------
# Dataset containers
# --------------------------------------------------------------------------------------------


class InMemoryDataset(TensorDataset):
    """A ``TensorDataset`` of ``(inputs, targets)`` that also carries its labelling.

    Attributes:
        targets: LongTensor (N,), the labels ``__getitem__`` returns (noisy if noise was added).
        clean_targets: LongTensor (N,), the labels before any label noise.
        flipped_mask: BoolTensor (N,), True where ``targets != clean_targets``.
        classes: list of class names, or None.
    """

    def __init__(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        *,
        clean_targets: torch.Tensor | None = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        targets = torch.as_tensor(targets, dtype=torch.long)
        super().__init__(inputs, targets)
        self.targets = targets
        self.clean_targets = (
            targets if clean_targets is None else torch.as_tensor(clean_targets, dtype=torch.long)
        )
        self.flipped_mask = self.targets != self.clean_targets
        self.classes = None if classes is None else list(classes)


class LabeledView(Dataset):
    """A view of ``base`` at ``indices`` with its own labels and its own transform.

    The base data set (torchvision CIFAR or ImageFolder) is built without a transform and
    loaded once; train (augmented), validation (not augmented) and capped views share it.
    ``base[indices[i]]`` supplies the image, ``targets[i]`` the label: this is how label
    noise and label remapping (ImageNet-R into the 1000-class space) reach the loader.

    Attributes: ``base``, ``indices`` (LongTensor), ``targets``, ``clean_targets``,
    ``flipped_mask`` (as in :class:`InMemoryDataset`), ``transform``, ``classes``.
    """

    def __init__(
        self,
        base: Dataset,
        indices: torch.Tensor,
        targets: torch.Tensor,
        *,
        transform: Callable | None = None,
        clean_targets: torch.Tensor | None = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        self.base = base
        self.indices = torch.as_tensor(indices, dtype=torch.long)
        self.targets = torch.as_tensor(targets, dtype=torch.long)
        if len(self.indices) != len(self.targets):
            raise ConfigError(
                f"indices and targets must have the same length, got {len(self.indices)} "
                f"and {len(self.targets)}"
            )
        self.clean_targets = (
            self.targets
            if clean_targets is None
            else torch.as_tensor(clean_targets, dtype=torch.long)
        )
        self.flipped_mask = self.targets != self.clean_targets
        self.transform = transform
        self.classes = None if classes is None else list(classes)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        x = self.base[int(self.indices[i])][0]
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.targets[i])


class IndexedDataset(Dataset):
    """Wrap a ``(x, y)`` data set so it yields ``(x, y, index)``; ``index`` is an int in [0, N).

    Attributes of the wrapped data set (``targets``, ``flipped_mask``, ...) stay reachable
    through the wrapper.

    Example::

        loader = DataLoader(IndexedDataset(bundle.train), batch_size=128, shuffle=True)
        for x, y, idx in loader:  # idx: LongTensor (B,), positions in bundle.train
            ...
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, Any, int]:
        x, y = self.dataset[index][:2]
        return x, y, index

    def __getattr__(self, name: str) -> Any:
        # Only called for missing attributes. Guard 'dataset' so unpickling (DataLoader
        # workers) does not recurse before __dict__ is filled.
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


@dataclass
class DataBundle:
    """Everything a run needs from a data set.

    Attributes:
        train, test: Datasets yielding ``(x, y)``. ``train.flipped_mask`` marks noisy labels.
        val: Dataset split off ``train`` (clean labels, no augmentation), or None.
        num_classes: int, size of the label space (and of the model's output).
        input_shape: ``(C, H, W)`` for images, ``(D,)`` for tabular/toy data.
        extra_eval: name -> Dataset, robustness sets with labels in the training label space.
        extra_eval_masks: name -> BoolTensor (num_classes,), classes an eval set covers; the
            evaluator sets logits outside the mask to -inf. Only filled with ``imagenet_r_mask``.
        class_names: list of class names, or None.
    """

    train: Dataset
    test: Dataset
    val: Dataset | None
    num_classes: int
    input_shape: tuple[int, ...]
    extra_eval: dict[str, Dataset] = field(default_factory=dict)
    extra_eval_masks: dict[str, torch.Tensor] = field(default_factory=dict)
    class_names: list[str] | None = None


# --------------------------------------------------------------------------------------------
# Randomness helpers
# --------------------------------------------------------------------------------------------


def _generator(seed: int, salt: int) -> torch.Generator:
    # One stream per decision so that, e.g., the noise pattern does not depend on whether a
    # validation split was drawn first.
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + salt) % (2**63))


def symmetric_label_noise(
    targets: Sequence[int] | torch.Tensor, rate: float, num_classes: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip exactly ``round(rate * N)`` labels, each to a class drawn uniformly from the others.

    Args:
        targets: (N,) class indices in [0, num_classes).
        rate: fraction of examples to flip, in [0, 1].
        num_classes: K >= 2.
        seed: the same seed gives the same flips.

    Returns:
        ``(noisy_targets, flipped_mask)``: LongTensor (N,) and BoolTensor (N,), with
        ``noisy_targets[flipped_mask] != targets[flipped_mask]`` and the rest unchanged.

    Example::

        noisy, flipped = symmetric_label_noise([0, 1, 2, 3], 0.5, num_classes=4, seed=0)
        int(flipped.sum())  # 2
    """
    targets = torch.as_tensor(targets, dtype=torch.long).clone()
    if targets.dim() != 1:
        raise ConfigError(f"targets must be 1-D (N,), got shape {tuple(targets.shape)}")
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"Invalid label noise rate: {rate} (allowed range [0, 1])")
    if num_classes < 2 and rate > 0:
        raise ConfigError(f"label noise needs num_classes >= 2, got {num_classes}")
    if len(targets) and (targets.min() < 0 or targets.max() >= num_classes):
        raise ConfigError(
            f"targets must lie in [0, {num_classes}), got range "
            f"[{int(targets.min())}, {int(targets.max())}]"
        )
    g = _generator(seed, _SALT_NOISE)
    n = len(targets)
    n_flip = round(rate * n)
    flipped = torch.zeros(n, dtype=torch.bool)
    flipped[torch.randperm(n, generator=g)[:n_flip]] = True
    # Adding an offset in [1, K-1] modulo K is a uniform draw over the K-1 other classes.
    offsets = torch.randint(1, max(num_classes, 2), (n_flip,), generator=g)
    targets[flipped] = (targets[flipped] + offsets) % num_classes
    return targets, flipped


# --------------------------------------------------------------------------------------------
# Toy 2-D problems (no scikit-learn at runtime)
# --------------------------------------------------------------------------------------------


def _balanced_labels(n: int, num_classes: int) -> torch.Tensor:
    return torch.arange(n) % num_classes


def make_moons(n: int, *, noise: float = 0.15, generator: torch.Generator | None = None):
    """Two interleaving half circles.

    Returns ``(x, y)``: float32 (n, 2) and long (n,) with classes {0, 1}, balanced.
    """
    y = _balanced_labels(n, 2)
    t = torch.rand(n, generator=generator) * math.pi
    outer = torch.stack([torch.cos(t), torch.sin(t)], dim=1)
    inner = torch.stack([1.0 - torch.cos(t), 0.5 - torch.sin(t)], dim=1)
    x = torch.where((y == 0)[:, None], outer, inner)
    x = x + noise * torch.randn(n, 2, generator=generator)
    return x.float(), y


def make_spirals(
    n: int,
    *,
    num_classes: int = 3,
    turns: float = 1.0,
    noise: float = 0.2,
    generator: torch.Generator | None = None,
):
    """``num_classes`` interleaved spiral arms (the CS231n toy problem).

    ``noise`` is the standard deviation of the angle jitter in radians.
    Returns ``(x, y)``: float32 (n, 2) and long (n,) in [0, num_classes), balanced.
    """
    y = _balanced_labels(n, num_classes)
    r = torch.rand(n, generator=generator)
    t = 2 * math.pi * turns * r + y * (2 * math.pi / num_classes)
    t = t + noise * torch.randn(n, generator=generator)
    x = torch.stack([r * torch.sin(t), r * torch.cos(t)], dim=1)
    return x.float(), y


def make_blobs(
    n: int,
    *,
    num_classes: int = 4,
    radius: float = 2.5,
    std: float = 1.0,
    generator: torch.Generator | None = None,
):
    """Isotropic Gaussian blobs with centres evenly spaced on a circle of ``radius``.

    Returns ``(x, y)``: float32 (n, 2) and long (n,) in [0, num_classes), balanced.
    """
    y = _balanced_labels(n, num_classes)
    angles = 2 * math.pi * torch.arange(num_classes) / num_classes + math.pi / 4
    centres = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    x = centres[y] + std * torch.randn(n, 2, generator=generator)
    return x.float(), y


_TOY_MAKERS = {"moons": make_moons, "spirals": make_spirals, "blobs": make_blobs}


def _toy_arrays(name: str):
    g = torch.Generator().manual_seed(_FIXED_DATA_SEED)
    make = _TOY_MAKERS[name]
    x_train, y_train = make(_TOY_TRAIN_SIZE, generator=g)
    x_test, y_test = make(_TOY_TEST_SIZE, generator=g)
    # Shuffle so the balanced class pattern (0, 1, 2, 0, 1, ...) does not leak into order.
    p = torch.randperm(_TOY_TRAIN_SIZE, generator=g)
    x_train, y_train = x_train[p], y_train[p]
    # Standardize with training statistics only, as one would with real data.
    mean, std = x_train.mean(0), x_train.std(0)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    num_classes = int(y_train.max()) + 1
    return x_train, y_train, x_test, y_test, [str(k) for k in range(num_classes)]


def _digits_arrays():
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # scikit-learn is a dev extra, not a runtime dependency
        raise ImportError(
            "the 'digits' data set ships with scikit-learn; install it with "
            "`pip install scikit-learn`"
        ) from err
    digits = load_digits()
    x = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N,1,8,8)
    y = torch.as_tensor(digits.target, dtype=torch.long)
    p = torch.randperm(len(y), generator=torch.Generator().manual_seed(_FIXED_DATA_SEED))
    test, train = p[:_DIGITS_TEST_SIZE], p[_DIGITS_TEST_SIZE:]
    return x[train], y[train], x[test], y[test], [str(k) for k in range(10)]


# --------------------------------------------------------------------------------------------
# Index selection shared by in-memory and on-disk data sets
# --------------------------------------------------------------------------------------------


def _cap(n: int, subset: int | None, seed: int, salt: int) -> torch.Tensor:
    if subset is None or subset >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=_generator(seed, salt))[:subset].sort().values


def _split_val(indices: torch.Tensor, val_fraction: float, seed: int):
    if val_fraction == 0:
        return indices, None
    n = len(indices)
    n_val = max(1, round(val_fraction * n))
    if n_val >= n:
        raise ConfigError(
            f"val_fraction={val_fraction} leaves no training examples out of {n}; "
            "use a smaller val_fraction"
        )
    p = torch.randperm(n, generator=_generator(seed, _SALT_VAL))
    return indices[p[n_val:].sort().values], indices[p[:n_val].sort().values]


def _check_args(name, subset, label_noise, val_fraction, image_size):
    if name not in DATASETS:
        raise ConfigError(f"Unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    if subset is not None and (not isinstance(subset, int) or subset < 1):
        raise ConfigError(f"subset must be a positive int or None, got {subset!r}")
    if not 0.0 <= label_noise <= 1.0:
        raise ConfigError(f"Invalid label_noise: {label_noise} (allowed range [0, 1])")
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"Invalid val_fraction: {val_fraction} (allowed range [0, 1))")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise ConfigError(f"image_size must be a positive int or None, got {image_size!r}")


# --------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------


def _cifar_transforms(name: str, image_size: int | None, augment: bool):
    from torchvision import transforms as T

    mean, std = _CIFAR_STATS[name]
    size = image_size or 32
    resize = [T.Resize(size)] if size != 32 else []
    tail = [T.ToTensor(), T.Normalize(mean, std)]
    eval_tf = T.Compose(resize + tail)
    if not augment:
        return eval_tf, eval_tf
    # The standard CIFAR recipe (pad-4 crop + flip), scaled with the image when resized.
    crop = T.RandomCrop(size, padding=max(1, size // 8), padding_mode="reflect")
    train_tf = T.Compose(resize + [crop, T.RandomHorizontalFlip()] + tail)
    return train_tf, eval_tf


def _imagenet_transforms(image_size: int, augment: bool):
    from torchvision import transforms as T

    tail = [T.ToTensor(), T.Normalize(*_IMAGENET_STATS)]
    # Resize to size/0.875 then centre-crop: the usual 256 -> 224 evaluation protocol.
    eval_tf = T.Compose([T.Resize(round(image_size / 0.875)), T.CenterCrop(image_size)] + tail)
    if not augment:
        return eval_tf, eval_tf
    train_tf = T.Compose(
        [T.RandomResizedCrop(image_size, scale=(0.05, 1.0)), T.RandomHorizontalFlip()] + tail
    )
    return train_tf, eval_tf


# --------------------------------------------------------------------------------------------
# On-disk loaders
# --------------------------------------------------------------------------------------------


def _load_cifar(name: str, root: Path, train: bool, download: bool):
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    pretty = "CIFAR-10" if name == "cifar10" else "CIFAR-100"
    where = root / cls.base_folder
    files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    how = (
        f"To get it, run once with --download (download=True) on a machine with internet "
        f"access, or download {cls.url} elsewhere and extract it into '{root}' (the "
        f"--data-dir / data_dir), so that '{where}' holds the files."
    )
    try:
        return cls(root=str(root), train=train, transform=None, download=download)
    except RuntimeError as err:
        if "not found or corrupted" not in str(err):
            raise
        raise DatasetNotFoundError(
            f"{pretty} not found (or corrupted) in '{where}': looked for {', '.join(files)}. {how}"
        ) from None
    except OSError as err:
        if not download:
            raise
        raise DatasetNotFoundError(
            f"Downloading {pretty} into '{root}' failed ({err}); this machine may have no "
            f"internet access. {how}"
        ) from None


_IMAGENET_LAYOUT = (
    "Expected layout: DATA_DIR/train/<wnid>/*.JPEG and DATA_DIR/val/<wnid>/*.JPEG "
    "(one folder per class, named by WordNet id such as n01440764). ImageNet cannot be "
    "downloaded automatically; get it from https://image-net.org and arrange the validation "
    "images into class folders."
)


def _image_folder(path: Path, what: str, layout: str):
    from torchvision import datasets

    if not path.is_dir():
        raise DatasetNotFoundError(f"{what} not found: '{path}' is not a directory. {layout}")
    try:
        return datasets.ImageFolder(str(path))
    except FileNotFoundError as err:  # no class folders, or folders without images
        raise DatasetNotFoundError(
            f"{what} in '{path}' holds no usable images ({err}). {layout}"
        ) from None


def _folder_to_train_index(folder: str, class_to_idx: dict[str, int], num_classes: int):
    if folder in class_to_idx:
        return class_to_idx[folder]
    # ImageNet-V2's release names its folders by class index ("0" ... "999") instead of wnid.
    if folder.isdigit() and int(folder) < num_classes:
        return int(folder)
    return None


def _train_indices_of_folders(folders: Sequence[str], train_classes: Sequence[str], what: str):
    class_to_idx = {c: i for i, c in enumerate(train_classes)}
    mapped = [_folder_to_train_index(f, class_to_idx, len(train_classes)) for f in folders]
    unknown = [f for f, m in zip(folders, mapped) if m is None]
    if unknown:
        raise ConfigError(
            f"{what}: {len(unknown)} class folder(s) match no training class, e.g. "
            f"{unknown[:5]}; folders must be named by a training class name (WordNet id) or "
            f"by a class index in [0, {len(train_classes)})"
        )
    return mapped


def class_mask_for(dataset: Any, train_classes: Sequence[str]) -> torch.Tensor:
    """Which training classes an evaluation set covers.

    Args:
        dataset: an ``ImageFolder`` (or a :class:`LabeledView` of one); its ``classes`` are
            folder names, each a training class name (e.g. WordNet id) or a class index.
        train_classes: the training set's class names, in label order.

    Returns:
        BoolTensor (len(train_classes),). For ImageNet-R, 200 of 1000 entries are True; an
        evaluator restricts the argmax by setting the other logits to -inf.
    """
    base = dataset.base if isinstance(dataset, LabeledView) else dataset
    if not hasattr(base, "classes"):
        raise TypeError("class_mask_for needs a dataset with a 'classes' list (an ImageFolder)")
    mask = torch.zeros(len(train_classes), dtype=torch.bool)
    mask[_train_indices_of_folders(base.classes, train_classes, "class_mask_for")] = True
    return mask


def _remapped_view(folder, train_classes, transform, indices, what):
    # Labels of an eval folder re-expressed in the training label space (ImageNet-R's 200
    # folders land on their indices among the 1000 training classes).
    mapping = torch.tensor(_train_indices_of_folders(folder.classes, train_classes, what))
    targets = mapping[torch.as_tensor(folder.targets, dtype=torch.long)[indices]]
    return LabeledView(folder, indices, targets, transform=transform, classes=train_classes)


# --------------------------------------------------------------------------------------------
# build_datasets
# --------------------------------------------------------------------------------------------


def build_datasets(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    subset: int | None = None,
    label_noise: float = 0.0,
    seed: int = 0,
    image_size: int | None = None,
    augment: bool = True,
    val_fraction: float = 0.0,
    eval_sets: dict[str, str | os.PathLike] | None = None,
    imagenet_r_mask: bool = False,
) -> DataBundle:
    """Build the train/test(/val) data sets named ``name`` (one of :data:`DATASETS`).

    Args:
        name: "moons", "spirals", "blobs" (2-D toy problems, 1,000 train / 1,000 test,
            standardized), "digits" (scikit-learn's 8x8 digits, 1,347 / 450, pixels in [0, 1]),
            "cifar10", "cifar100" (torchvision's loaders, 50,000 / 10,000) or "imagenet"
            (ImageFolders ``data_dir/train`` and ``data_dir/val``).
        data_dir: where CIFAR / ImageNet live. CIFAR defaults to ``./data``; ImageNet needs it.
        download: let torchvision download CIFAR into ``data_dir`` (needs internet).
        subset: cap every split (train, test and each eval set) at this many examples, chosen
            at random (seeded), for quick runs. ``None`` keeps everything.
        label_noise: rate of symmetric label noise on the training split only (see
            :func:`symmetric_label_noise`); ``train.flipped_mask`` marks the flipped examples.
            Test, validation and eval sets keep their true labels.
        seed: drives subset, validation split and label noise.
        image_size: side in pixels. CIFAR: resize 32 -> image_size (224 for the paper's
            transfer runs); ImageNet: crop size (default 224). Ignored otherwise.
        augment: train-time augmentation (CIFAR: reflect-pad crop + flip; ImageNet:
            random-resized-crop with scale (0.05, 1) + flip). Evaluation is never augmented.
        val_fraction: fraction of the (capped) training split held out as ``val``, with clean
            labels and evaluation transforms.
        eval_sets: robustness sets as ``{name: ImageFolder path}`` (e.g. "imagenet-v2",
            "imagenet-r", "imagenet-sketch"); folders named by training class (WordNet id) or
            by class index; labels are mapped into the training label space.
        imagenet_r_mask: also provide ``extra_eval_masks[name]`` for every eval set covering
            fewer classes than training (ImageNet-R: 200 of 1000). Default: 1000-way argmax,
            as in the paper.

    Returns:
        A :class:`DataBundle`.

    Raises:
        ValueError: unknown name (lists the valid names) or an argument out of range.
        DatasetNotFoundError: CIFAR / ImageNet / an eval set missing; says where and how.
    """
    _check_args(name, subset, label_noise, val_fraction, image_size)
    if eval_sets and name not in ("cifar10", "cifar100", "imagenet"):
        raise ConfigError(
            f"eval_sets needs an image data set (cifar10, cifar100, imagenet), not {name!r}"
        )
    if imagenet_r_mask and not eval_sets:
        raise ConfigError("imagenet_r_mask=True needs eval_sets, e.g. {'imagenet-r': PATH}")

    if name in _TOY or name == "digits":
        x_tr, y_tr, x_te, y_te, classes = _toy_arrays(name) if name in _TOY else _digits_arrays()
        num_classes = len(classes)
        tr_idx = _cap(len(y_tr), subset, seed, _SALT_SUBSET_TRAIN)
        te_idx = _cap(len(y_te), subset, seed, _SALT_SUBSET_TEST)
        tr_idx, va_idx = _split_val(tr_idx, val_fraction, seed)
        noisy, _ = symmetric_label_noise(y_tr[tr_idx], label_noise, num_classes, seed)
        train = InMemoryDataset(x_tr[tr_idx], noisy, clean_targets=y_tr[tr_idx], classes=classes)
        test = InMemoryDataset(x_te[te_idx], y_te[te_idx], classes=classes)
        val = (
            None if va_idx is None else InMemoryDataset(x_tr[va_idx], y_tr[va_idx], classes=classes)
        )
        return DataBundle(
            train=train,
            test=test,
            val=val,
            num_classes=num_classes,
            input_shape=tuple(x_tr.shape[1:]),
            class_names=classes,
        )

    if name in ("cifar10", "cifar100"):
        root = Path(data_dir) if data_dir is not None else Path("data")
        train_base = _load_cifar(name, root, True, download)
        test_base = _load_cifar(name, root, False, download=False)
        train_tf, eval_tf = _cifar_transforms(name, image_size, augment)
        size = image_size or 32
        folder_layout = (
            "Expected an ImageFolder: one folder per class, named by class name "
            f"({', '.join(train_base.classes[:3])}, ...) or index."
        )
    else:
        if data_dir is None:
            raise DatasetNotFoundError(
                f"imagenet needs data_dir (--data-dir) pointing at the ImageNet root. {_IMAGENET_LAYOUT}"
            )
        root = Path(data_dir)
        train_base = _image_folder(root / "train", "ImageNet training set", _IMAGENET_LAYOUT)
        test_base = _image_folder(root / "val", "ImageNet validation set", _IMAGENET_LAYOUT)
        size = image_size or 224
        train_tf, eval_tf = _imagenet_transforms(size, augment)
        folder_layout = (
            "Expected an ImageFolder: PATH/<wnid>/*.JPEG (or PATH/<class index>/*.jpeg as in "
            "ImageNet-V2's release)."
        )

    classes = list(train_base.classes)
    num_classes = len(classes)
    y_tr = torch.as_tensor(train_base.targets, dtype=torch.long)
    tr_idx = _cap(len(y_tr), subset, seed, _SALT_SUBSET_TRAIN)
    te_idx = _cap(len(test_base.targets), subset, seed, _SALT_SUBSET_TEST)
    tr_idx, va_idx = _split_val(tr_idx, val_fraction, seed)
    noisy, _ = symmetric_label_noise(y_tr[tr_idx], label_noise, num_classes, seed)
    train = LabeledView(
        train_base, tr_idx, noisy, transform=train_tf, clean_targets=y_tr[tr_idx], classes=classes
    )
    val = None
    if va_idx is not None:
        val = LabeledView(train_base, va_idx, y_tr[va_idx], transform=eval_tf, classes=classes)
    if name == "imagenet":
        # The val folders may cover fewer classes than train; align by folder name.
        test = _remapped_view(test_base, classes, eval_tf, te_idx, "ImageNet validation set")
    else:
        y_te = torch.as_tensor(test_base.targets, dtype=torch.long)
        test = LabeledView(test_base, te_idx, y_te[te_idx], transform=eval_tf, classes=classes)

    extra_eval: dict[str, Dataset] = {}
    extra_eval_masks: dict[str, torch.Tensor] = {}
    for key, path in (eval_sets or {}).items():
        folder = _image_folder(Path(path), f"evaluation set {key!r}", folder_layout)
        idx = _cap(len(folder.targets), subset, seed, _SALT_SUBSET_EVAL)
        extra_eval[key] = _remapped_view(folder, classes, eval_tf, idx, f"evaluation set {key!r}")
        if imagenet_r_mask:
            mask = class_mask_for(folder, classes)
            if not mask.all():
                extra_eval_masks[key] = mask
    if imagenet_r_mask and not extra_eval_masks:
        raise ConfigError(
            "imagenet_r_mask=True but every eval set covers all training classes; the mask "
            "is meant for subsets such as ImageNet-R (200 of 1000 classes)"
        )

    return DataBundle(
        train=train,
        test=test,
        val=val,
        num_classes=num_classes,
        input_shape=(3, size, size),
        extra_eval=extra_eval,
        extra_eval_masks=extra_eval_masks,
        class_names=classes,
    )
