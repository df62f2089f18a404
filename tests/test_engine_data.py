"""Data sets of the engine: toy, digits, and the real torchvision loaders on generated files."""

from __future__ import annotations

import pickle

import pytest
import torch
from fixtures_data import (
    CIFAR10_CLASSES,
    WNIDS,
    make_fake_cifar10,
    make_fake_cifar100,
    make_fake_imagefolder,
    make_fake_imagenet,
    patch_cifar_checksums,
)
from torch.utils.data import DataLoader

from forgetting_sam.engine.data import (
    DATASETS,
    DatasetNotFoundError,
    IndexedDataset,
    build_datasets,
    class_mask_for,
    symmetric_label_noise,
)

# ------------------------------------------------------------------------------ label noise


def test_symmetric_label_noise_exact_rate_other_classes_and_seeded():
    targets = torch.arange(1000) % 10
    noisy, flipped = symmetric_label_noise(targets, 0.37, num_classes=10, seed=3)
    assert int(flipped.sum()) == 370
    assert torch.equal(flipped, noisy != targets)  # every flip lands on another class
    assert torch.equal(noisy[~flipped], targets[~flipped])
    assert noisy.min() >= 0 and noisy.max() < 10
    again, flipped_again = symmetric_label_noise(targets, 0.37, num_classes=10, seed=3)
    assert torch.equal(again, noisy) and torch.equal(flipped_again, flipped)
    other, _ = symmetric_label_noise(targets, 0.37, num_classes=10, seed=4)
    assert not torch.equal(other, noisy)
    assert torch.equal(targets, torch.arange(1000) % 10)  # input not modified


def test_symmetric_label_noise_is_uniform_over_other_classes():
    # All labels 0 and rate 1: the new labels should be spread evenly over classes 1..4.
    noisy, flipped = symmetric_label_noise(torch.zeros(8000, dtype=torch.long), 1.0, 5, seed=0)
    assert bool(flipped.all())
    counts = torch.bincount(noisy, minlength=5)
    assert counts[0] == 0
    assert torch.all((counts[1:] - 2000).abs() < 200)  # ~5 standard deviations


def test_symmetric_label_noise_rejects_bad_input():
    with pytest.raises(ValueError, match="rate"):
        symmetric_label_noise([0, 1], 1.5, 2)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        symmetric_label_noise([0, 5], 0.5, 3)
    with pytest.raises(ValueError, match="num_classes >= 2"):
        symmetric_label_noise([0, 0], 0.5, 1)


# ------------------------------------------------------------------------------ toy and digits


@pytest.mark.parametrize("name,num_classes", [("moons", 2), ("spirals", 3), ("blobs", 4)])
def test_toy_datasets(name, num_classes):
    b = build_datasets(name)
    assert (len(b.train), len(b.test)) == (1000, 1000)
    assert b.input_shape == (2,) and b.num_classes == num_classes and b.val is None
    x, y = b.train.tensors
    assert x.shape == (1000, 2) and x.dtype == torch.float32
    assert torch.allclose(x.mean(0), torch.zeros(2), atol=1e-5)  # standardized on train
    assert torch.allclose(x.std(0), torch.ones(2), atol=1e-5)
    assert set(y.tolist()) == set(range(num_classes))
    counts = torch.bincount(b.test.targets, minlength=num_classes)
    assert counts.max() - counts.min() <= 1  # balanced classes
    # The data set is fixed; seed only drives subset/val/noise choices.
    assert torch.equal(build_datasets(name, seed=5).train.tensors[0], x)


def test_digits_split_range_noise_and_val():
    b = build_datasets("digits")
    assert (len(b.train), len(b.test)) == (1347, 450)
    assert b.input_shape == (1, 8, 8) and b.num_classes == 10
    x, _y = b.train[0]
    assert x.shape == (1, 8, 8) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert float(b.train.tensors[0].max()) == 1.0

    noisy = build_datasets("digits", label_noise=0.3, val_fraction=0.1, seed=1)
    n_train = 1347 - round(0.1 * 1347)
    assert (len(noisy.train), len(noisy.val)) == (n_train, round(0.1 * 1347))
    assert int(noisy.train.flipped_mask.sum()) == round(0.3 * n_train)
    assert torch.equal(noisy.train.flipped_mask, noisy.train.targets != noisy.train.clean_targets)
    # test set untouched, and val keeps clean labels
    assert torch.equal(noisy.test.targets, b.test.targets)
    assert not noisy.val.flipped_mask.any() and not noisy.test.flipped_mask.any()
    # val and train are disjoint pieces of the original training set
    rows = {tuple(r.flatten().tolist()) for r in noisy.train.tensors[0]}
    assert not any(tuple(r.flatten().tolist()) in rows for r in noisy.val.tensors[0])
    # the same seed reproduces everything
    again = build_datasets("digits", label_noise=0.3, val_fraction=0.1, seed=1)
    assert torch.equal(again.train.targets, noisy.train.targets)


def test_subset_caps_train_and_test_seeded():
    a = build_datasets("moons", subset=64, seed=0)
    assert (len(a.train), len(a.test)) == (64, 64)
    assert torch.equal(
        build_datasets("moons", subset=64, seed=0).train.tensors[0], a.train.tensors[0]
    )
    assert not torch.equal(
        build_datasets("moons", subset=64, seed=1).train.tensors[0], a.train.tensors[0]
    )


def test_indexed_dataset_yields_indices_and_keeps_attributes():
    b = build_datasets("blobs", subset=40, label_noise=0.5)
    ds = IndexedDataset(b.train)
    assert ds.flipped_mask is b.train.flipped_mask
    x, y, i = ds[7]
    assert i == 7 and y == int(b.train.targets[7]) and torch.equal(x, b.train[7][0])
    _xs, ys, idx = next(iter(DataLoader(ds, batch_size=40, shuffle=True)))
    assert sorted(idx.tolist()) == list(range(40))
    assert torch.equal(ys, b.train.targets[idx])
    # picklable for DataLoader workers (spawn) without __getattr__ recursion
    assert len(pickle.loads(pickle.dumps(ds))) == 40


def test_bad_names_and_arguments():
    with pytest.raises(ValueError, match="cifar10.*imagenet"):
        build_datasets("mnist")
    with pytest.raises(ValueError, match="label_noise"):
        build_datasets("moons", label_noise=-0.1)
    with pytest.raises(ValueError, match="val_fraction"):
        build_datasets("moons", val_fraction=1.0)
    with pytest.raises(ValueError, match="subset"):
        build_datasets("moons", subset=0)
    with pytest.raises(ValueError, match="eval_sets"):
        build_datasets("moons", eval_sets={"x": "/nowhere"})
    assert set(DATASETS) == {
        "moons",
        "spirals",
        "blobs",
        "digits",
        "cifar10",
        "cifar100",
        "imagenet",
    }


# ------------------------------------------------------------------------------ CIFAR


def test_cifar10_real_loader_on_generated_files(tmp_path, monkeypatch):
    make_fake_cifar10(tmp_path, n_train=40, n_test=20)
    patch_cifar_checksums(monkeypatch, tmp_path, "cifar10")
    b = build_datasets("cifar10", data_dir=tmp_path, label_noise=0.25, val_fraction=0.25)
    assert b.num_classes == 10 and b.input_shape == (3, 32, 32)
    assert b.class_names == CIFAR10_CLASSES
    assert (len(b.train), len(b.val), len(b.test)) == (30, 10, 20)
    assert int(b.train.flipped_mask.sum()) == round(0.25 * 30)
    x, y = b.train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= y < 10
    xs, ys = next(iter(DataLoader(b.test, batch_size=20)))
    assert xs.shape == (20, 3, 32, 32) and ys.min() >= 0 and ys.max() < 10
    # the test labels are exactly the pickled ones
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "rb") as f:
        assert ys.tolist() == pickle.load(f, encoding="latin1")["labels"]
    # training images are augmented (random crop + flip), evaluation images are not
    torch.manual_seed(0)
    assert any(not torch.equal(b.train[3][0], b.train[3][0]) for _ in range(5))
    assert torch.equal(b.test[3][0], b.test[3][0])

    resized = build_datasets("cifar10", data_dir=tmp_path, image_size=48, augment=False, subset=8)
    assert resized.input_shape == (3, 48, 48) and resized.train[0][0].shape == (3, 48, 48)
    assert (len(resized.train), len(resized.test)) == (8, 8)
    assert torch.equal(resized.train[2][0], resized.train[2][0])  # augment=False: no randomness


def test_cifar100_real_loader_on_generated_files(tmp_path, monkeypatch):
    make_fake_cifar100(tmp_path, n_train=200, n_test=100)
    patch_cifar_checksums(monkeypatch, tmp_path, "cifar100")
    b = build_datasets("cifar100", data_dir=tmp_path)
    assert b.num_classes == 100 and len(b.train) == 200 and len(b.test) == 100
    assert set(b.train.targets.tolist()) == set(range(100))
    assert b.train[5][0].shape == (3, 32, 32)


def test_missing_cifar_says_where_and_how(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        build_datasets("cifar10", data_dir=tmp_path / "nothing")
    msg = str(info.value)
    assert "cifar-10-batches-py" in msg and str(tmp_path / "nothing") in msg
    assert "--download" in msg and "internet" in msg
    assert isinstance(info.value, FileNotFoundError)


def test_corrupted_cifar_is_rejected(tmp_path):
    # Generated files do not match torchvision's real md5 sums: the library stays strict.
    make_fake_cifar10(tmp_path, n_train=10, n_test=5)
    with pytest.raises(DatasetNotFoundError, match="corrupted"):
        build_datasets("cifar10", data_dir=tmp_path)


# ------------------------------------------------------------------------------ ImageNet


def test_imagenet_imagefolder_and_robustness_sets(tmp_path):
    root = make_fake_imagenet(tmp_path / "imagenet", WNIDS, n_train=3, n_val=2, size=40)
    # ImageNet-R style: a subset of the wnids. ImageNet-V2 style: folders named by index.
    r_classes = [WNIDS[4], WNIDS[1]]
    make_fake_imagefolder(tmp_path / "r", r_classes, n_per_class=2, size=36)
    make_fake_imagefolder(tmp_path / "v2", ["0", "2", "4"], n_per_class=1, size=36)
    eval_sets = {"imagenet-r": tmp_path / "r", "imagenet-v2": tmp_path / "v2"}

    b = build_datasets("imagenet", data_dir=root, image_size=32, eval_sets=eval_sets)
    assert b.num_classes == 5 and b.input_shape == (3, 32, 32) and b.class_names == WNIDS
    assert (len(b.train), len(b.test)) == (15, 10)
    assert b.train[0][0].shape == (3, 32, 32) and b.test[0][0].shape == (3, 32, 32)
    assert b.extra_eval_masks == {}  # default: 1000-way (here 5-way) argmax, like the paper

    r = b.extra_eval["imagenet-r"]
    # ImageFolder numbers r's folders 0, 1 in sorted order; labels must be the training indices
    assert sorted(r.targets.tolist()) == [1, 1, 4, 4]
    for i in range(len(r)):
        path = r.base.samples[int(r.indices[i])][0]
        assert WNIDS.index(path.split("/")[-2]) == r[i][1]
    assert r[0][0].shape == (3, 32, 32)
    v2 = b.extra_eval["imagenet-v2"]
    assert sorted(v2.targets.tolist()) == [0, 2, 4]

    masked = build_datasets(
        "imagenet", data_dir=root, image_size=32, eval_sets=eval_sets, imagenet_r_mask=True
    )
    assert set(masked.extra_eval_masks) == {"imagenet-r", "imagenet-v2"}
    assert masked.extra_eval_masks["imagenet-r"].tolist() == [False, True, False, False, True]
    assert torch.equal(class_mask_for(r, WNIDS), masked.extra_eval_masks["imagenet-r"])


def test_imagenet_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        build_datasets("imagenet", data_dir=tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "train") in msg and "DATA_DIR/train/<wnid>/*.JPEG" in msg
    with pytest.raises(DatasetNotFoundError, match="data_dir"):
        build_datasets("imagenet")
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetNotFoundError, match="no usable images"):
        build_datasets("imagenet", data_dir=tmp_path)

    root = make_fake_imagenet(tmp_path / "in", WNIDS[:2], n_train=1, n_val=1, size=16)
    with pytest.raises(DatasetNotFoundError, match="imagenet-sketch"):
        build_datasets("imagenet", data_dir=root, eval_sets={"imagenet-sketch": tmp_path / "no"})
    make_fake_imagefolder(tmp_path / "odd", ["n99999999"], n_per_class=1, size=16)
    with pytest.raises(ValueError, match="n99999999"):
        build_datasets("imagenet", data_dir=root, eval_sets={"odd": tmp_path / "odd"})
