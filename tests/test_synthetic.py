import pickle

import numpy as np
import pytest

from forgetting_sam.engine.synthetic import cifar_md5s, write_digits_as_cifar10


def test_digits_in_cifar_format_are_read_by_torchvision(tmp_path, monkeypatch):
    from torchvision import datasets

    folder = write_digits_as_cifar10(tmp_path, test_fraction=0.2, seed=0)
    md5 = cifar_md5s(folder)
    cls = datasets.CIFAR10
    monkeypatch.setattr(cls, "train_list", [[f, md5[f]] for f, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[f, md5[f]] for f, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", dict(cls.meta, md5=md5[cls.meta["filename"]]))
    train, test = cls(str(tmp_path), train=True), cls(str(tmp_path), train=False)
    assert len(train) + len(test) == 1797 and len(test) == 359
    assert sorted(set(train.targets)) == list(range(10))
    img, label = train[0]
    arr = np.asarray(img)
    assert arr.shape == (32, 32, 3) and arr.max() > 100 and arr.min() == 0
    # The 4x4 blocks of a rendered digit are constant: the image is the 8x8 scan, upscaled.
    assert (arr[::4, ::4] == arr[3::4, 3::4]).all()


def test_split_is_deterministic_and_disjoint(tmp_path):
    a = write_digits_as_cifar10(tmp_path / "a", seed=1)
    b = write_digits_as_cifar10(tmp_path / "b", seed=1)
    assert cifar_md5s(a) == cifar_md5s(b)
    with open(a / "test_batch", "rb") as f:
        test_names = set(pickle.load(f)["filenames"])
    train_names = set()
    for k in range(1, 6):
        with open(a / f"data_batch_{k}", "rb") as f:
            train_names |= set(pickle.load(f)["filenames"])
    assert not test_names & train_names and len(test_names | train_names) == 1797


def test_bad_arguments_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="test_fraction"):
        write_digits_as_cifar10(tmp_path, test_fraction=1.5)
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        cifar_md5s(tmp_path / "missing")
