"""Small real-image data sets written in the on-disk formats of the big ones.

:func:`write_digits_as_cifar10` renders scikit-learn's handwritten digits (1,797 real 8x8
scans) as 32x32 colour images in torchvision's CIFAR-10 pickle format, so the real CIFAR
loader, transforms and training loop run on real images that a CPU learns in a minute.
Nothing here is imported by the engine; notebooks and tests use it.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np

__all__ = ["write_digits_as_cifar10", "cifar_md5s"]

_CLASSES = [f"digit {k}" for k in range(10)]
_TRAIN_FILES = [f"data_batch_{b}" for b in range(1, 6)]


def _render(images8: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, 8, 8) values in [0, 16] -> (N, 3072) uint8 CIFAR rows (R, G, B planes of 32x32)."""
    big = np.kron(images8 / 16.0, np.ones((4, 4)))  # nearest-neighbour x4: (N, 32, 32)
    # A random ink colour per image on a dark background: three channels that all carry the digit.
    ink = rng.uniform(0.5, 1.0, size=(len(big), 3, 1, 1))
    rgb = 255.0 * ink * big[:, None]
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8).reshape(len(big), 3 * 32 * 32)


def _dump(obj: dict, path: Path) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_digits_as_cifar10(root, *, test_fraction: float = 0.2, seed: int = 0) -> Path:
    """Write the digits as ``root/cifar-10-batches-py`` (five train batches, a test batch, meta).

    Args:
        root: the data directory (``data_dir``) that will hold ``cifar-10-batches-py``.
        test_fraction: share of the 1,797 images put in ``test_batch`` (stratified by a
            seeded shuffle), in (0, 1).
        seed: seeds the split and the ink colours.

    Returns:
        The ``cifar-10-batches-py`` folder. Its md5 sums are not CIFAR-10's, so torchvision's
        integrity check rejects it until its checksums are pointed at these files
        (:func:`cifar_md5s` gives them).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(digits.target))
    n_test = int(round(test_fraction * len(order)))
    test_idx, train_idx = order[:n_test], order[n_test:]
    rows = _render(digits.images, rng)
    labels = digits.target.astype(int)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for b, chunk in enumerate(np.array_split(train_idx, len(_TRAIN_FILES))):
        _dump(
            {
                "batch_label": f"training batch {b + 1} of 5",
                "labels": [int(v) for v in labels[chunk]],
                "data": rows[chunk],
                "filenames": [f"digit_{i}.png" for i in chunk],
            },
            folder / _TRAIN_FILES[b],
        )
    _dump(
        {
            "batch_label": "testing batch 1 of 1",
            "labels": [int(v) for v in labels[test_idx]],
            "data": rows[test_idx],
            "filenames": [f"digit_{i}.png" for i in test_idx],
        },
        folder / "test_batch",
    )
    _dump({"num_cases_per_batch": len(train_idx) // 5, "label_names": _CLASSES, "num_vis": 3072}, folder / "batches.meta")
    return folder


def cifar_md5s(folder) -> dict[str, str]:
    """md5 hex digest of every file in a ``cifar-10-batches-py``-style folder, by file name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"cifar_md5s: '{folder}' is not a folder; pass the cifar-10-batches-py folder")
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}
