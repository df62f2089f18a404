"""Tiny data sets in the real on-disk formats, for tests of the real loaders.

- :func:`make_fake_cifar10` / :func:`make_fake_cifar100` write torchvision's pickled layout
  (``cifar-10-batches-py/data_batch_1..5``, ``test_batch``, ``batches.meta``;
  ``cifar-100-python/train``, ``test``, ``meta``). torchvision checks the real files' md5
  sums, so tests call :func:`patch_cifar_checksums` (with pytest's ``monkeypatch``) to point
  the class at the fake files' sums. The library itself stays strict.
- :func:`make_fake_imagefolder` writes real JPEGs in ``ROOT/<class>/*.JPEG``;
  :func:`make_fake_imagenet` builds ``train/`` and ``val/`` from it.

Example (in a test)::

    def test_cifar(tmp_path, monkeypatch):
        make_fake_cifar10(tmp_path, n_train=20, n_test=10)
        patch_cifar_checksums(monkeypatch, tmp_path, "cifar10")
        bundle = build_datasets("cifar10", data_dir=tmp_path)
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np

CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip

# A few real ImageNet WordNet ids (tench, goldfish, great white shark, tiger shark, hammerhead).
WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361", "n01494475"]


def _images(n: int, rng: np.random.Generator) -> np.ndarray:
    # CIFAR rows: 3072 uint8 values, channel-major (R plane, G plane, B plane), 32x32 each.
    return rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)


def _labels(n: int, num_classes: int, rng: np.random.Generator) -> list[int]:
    # Cycle through the classes so every class appears once n >= num_classes.
    return [int(v) for v in rng.permutation(np.arange(n) % num_classes)]


def _dump(obj: dict, path: Path) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def make_fake_cifar10(root, n_train: int = 50, n_test: int = 20, seed: int = 0) -> Path:
    """Write a tiny CIFAR-10 in torchvision's format under ``root/cifar-10-batches-py``.

    The ``n_train`` images are spread over the five ``data_batch_*`` files. Returns the
    ``cifar-10-batches-py`` folder.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    data, labels = _images(n_train, rng), _labels(n_train, 10, rng)
    bounds = np.linspace(0, n_train, 6).astype(int)
    for b in range(5):
        lo, hi = bounds[b], bounds[b + 1]
        _dump(
            {
                "batch_label": f"training batch {b + 1} of 5",
                "labels": labels[lo:hi],
                "data": data[lo:hi],
                "filenames": [f"fake_{i}.png" for i in range(lo, hi)],
            },
            folder / f"data_batch_{b + 1}",
        )
    _dump(
        {
            "batch_label": "testing batch 1 of 1",
            "labels": _labels(n_test, 10, rng),
            "data": _images(n_test, rng),
            "filenames": [f"fake_test_{i}.png" for i in range(n_test)],
        },
        folder / "test_batch",
    )
    _dump(
        {"num_cases_per_batch": int(bounds[1]), "label_names": CIFAR10_CLASSES, "num_vis": 3072},
        folder / "batches.meta",
    )
    return folder


def make_fake_cifar100(root, n_train: int = 200, n_test: int = 100, seed: int = 0) -> Path:
    """Write a tiny CIFAR-100 in torchvision's format under ``root/cifar-100-python``.

    Labels cycle through all 100 fine classes, so ``n_train >= 100`` covers every class.
    Returns the ``cifar-100-python`` folder.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        fine = _labels(n, 100, rng)
        _dump(
            {
                "filenames": [f"fake_{split}_{i}.png" for i in range(n)],
                "batch_label": f"{split}ing batch 1 of 1",
                "fine_labels": fine,
                "coarse_labels": [f // 5 for f in fine],
                "data": _images(n, rng),
            },
            folder / split,
        )
    _dump(
        {
            "fine_label_names": [f"fine_{k:02d}" for k in range(100)],
            "coarse_label_names": [f"coarse_{k:02d}" for k in range(20)],
        },
        folder / "meta",
    )
    return folder


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def patch_cifar_checksums(monkeypatch, root, which: str = "cifar10") -> None:
    """Point torchvision's CIFAR10/CIFAR100 class at the md5 sums of the fake files in ``root``.

    ``which`` is "cifar10" or "cifar100". Uses ``monkeypatch`` so the class is restored after
    the test.
    """
    from torchvision import datasets

    cls = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[which]
    folder = Path(root) / cls.base_folder
    # setattr on the class itself: CIFAR100 inherits from CIFAR10, so patch each separately.
    monkeypatch.setattr(cls, "train_list", [[f, _md5(folder / f)] for f, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[f, _md5(folder / f)] for f, _ in cls.test_list])
    meta = dict(cls.meta, md5=_md5(folder / cls.meta["filename"]))
    monkeypatch.setattr(cls, "meta", meta)


def make_fake_imagefolder(
    root,
    classes: Sequence[str] = WNIDS,
    n_per_class: int = 2,
    size: int | tuple[int, int] = 32,
    seed: int = 0,
    ext: str = ".JPEG",
) -> Path:
    """Write ``n_per_class`` random JPEGs into ``root/<class>/`` for each class; returns ``root``.

    ``size`` is the side (or ``(width, height)``) in pixels.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    width, height = (size, size) if isinstance(size, int) else size
    root = Path(root)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{c}_{i}{ext}", format="JPEG")
    return root


def make_fake_imagenet(
    root,
    classes: Sequence[str] = WNIDS,
    n_train: int = 3,
    n_val: int = 2,
    size: int | tuple[int, int] = 40,
    seed: int = 0,
) -> Path:
    """Write a tiny ImageNet: ``root/train/<wnid>/*.JPEG`` and ``root/val/<wnid>/*.JPEG``.

    Returns ``root`` (what ``build_datasets("imagenet", data_dir=root)`` expects).
    """
    make_fake_imagefolder(Path(root) / "train", classes, n_train, size, seed)
    make_fake_imagefolder(Path(root) / "val", classes, n_val, size, seed + 1)
    return Path(root)
