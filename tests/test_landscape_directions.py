"""Directions: filter/layer/weight normalization, seeds, save/load, mismatches, interpolation."""

import pytest
import torch
from torch import nn

from forgetting_sam.landscape import (
    Direction,
    Plane,
    model_direction,
    normalize_direction,
    random_direction,
    random_plane,
)


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def test_filter_norms_equal_weight_filter_norms():
    model = small_cnn()
    d = random_direction(model, seed=3)
    for name, w in model.named_parameters():
        if w.dim() <= 1:
            assert torch.count_nonzero(d[name]) == 0, f"1-D tensor {name} must be zeroed by default"
            continue
        w_rows = torch.linalg.vector_norm(w.detach().reshape(w.shape[0], -1), dim=1)
        d_rows = torch.linalg.vector_norm(d[name].reshape(w.shape[0], -1), dim=1)
        torch.testing.assert_close(d_rows, w_rows, rtol=1e-5, atol=1e-7)


def test_include_1d_keeps_biases_with_weight_magnitudes():
    model = small_cnn()
    d = random_direction(model, seed=1, include_1d=True)
    torch.testing.assert_close(d["4.bias"].abs(), model[4].bias.detach().abs(), rtol=1e-5, atol=1e-7)


def test_layer_and_weight_normalization_and_raw():
    model = small_cnn()
    raw = random_direction(model, seed=5, norm=None, include_1d=True)
    layer = normalize_direction(raw, model, "layer")
    weight = normalize_direction(raw, model, "weight", include_1d=True)
    w = model[0].weight.detach()
    torch.testing.assert_close(torch.linalg.vector_norm(layer["0.weight"]), torch.linalg.vector_norm(w))
    torch.testing.assert_close(weight["0.weight"], raw["0.weight"] * w.abs())
    # Raw is a standard Gaussian: mean ~0, std ~1 over ~300 numbers.
    allnum = torch.cat([t.reshape(-1) for t in raw.values()])
    assert abs(float(allnum.mean())) < 0.2 and abs(float(allnum.std()) - 1) < 0.2


def test_seed_reproducible_and_plane_axes_differ():
    model = small_cnn()
    a, b = random_plane(model, seed=7), random_plane(model, seed=7)
    for name in a.x:
        assert torch.equal(a.x[name], b.x[name]) and torch.equal(a.y[name], b.y[name])
    assert not torch.equal(a.x["0.weight"], a.y["0.weight"])
    assert not torch.equal(random_direction(model, seed=1)["0.weight"], random_direction(model, seed=2)["0.weight"])


def test_buffers_option_covers_batchnorm_statistics():
    model = small_cnn()
    model[1].running_var.fill_(2.0)
    d = random_direction(model, seed=0, buffers=True, include_1d=True)
    assert set(d.buffers) == {"1.running_mean", "1.running_var"}
    torch.testing.assert_close(d["1.running_var"].abs(), torch.full((4,), 2.0))


def test_save_load_roundtrip_weights_only(tmp_path):
    model = small_cnn()
    plane = random_plane(model, seed=2, buffers=True)
    plane.save(tmp_path / "plane.pt")
    state = torch.load(tmp_path / "plane.pt", weights_only=True)  # plain tensors only
    assert isinstance(state, dict)
    again = Plane.load(tmp_path / "plane.pt")
    for k in plane.x:
        assert torch.equal(again.x[k], plane.x[k]) and torch.equal(again.y[k], plane.y[k])
    assert again.x.buffers == plane.x.buffers
    plane.x.save(tmp_path / "d.pt")
    assert torch.equal(Direction.load(tmp_path / "d.pt")["0.weight"], plane.x["0.weight"])
    with pytest.raises(ValueError, match="not a saved Plane"):
        Plane.load(tmp_path / "d.pt")


def test_mismatch_names_the_tensor():
    model = small_cnn()
    d = random_direction(model, seed=0)
    other = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5))
    with pytest.raises(ValueError, match=r"'4\.weight' has shape \(3, 64\).*\(5, 64\)"):
        d.check(other)
    missing = Direction({k: v for k, v in d.items() if k != "4.bias"})
    with pytest.raises(ValueError, match=r"no tensor for the model's trainable parameter '4\.bias'"):
        missing.check(model)
    extra = Direction({**dict(d.items()), "head.weight": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"'head\.weight' is not a trainable parameter"):
        extra.check(model)
    with pytest.raises(ValueError, match="Invalid norm"):
        random_direction(model, norm="unit")


def test_no_trainable_parameters_rejected():
    model = small_cnn().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        random_direction(model)


def test_model_direction_is_the_difference_and_arithmetic():
    a, b = small_cnn(), small_cnn()
    with torch.no_grad():
        for p in b.parameters():
            p.add_(1.0)
    d = model_direction(a, b)
    for name, p in a.named_parameters():
        torch.testing.assert_close(d[name], torch.ones_like(p))
    n = sum(p.numel() for p in a.parameters())
    torch.testing.assert_close(float(d.norm()), n ** 0.5)
    torch.testing.assert_close(float((d + d).dot(d)), 2.0 * n)
    torch.testing.assert_close(float((0.5 * d - d).norm()), 0.5 * n ** 0.5)
    with pytest.raises(ValueError, match=r"'4\.weight' has shape"):
        model_direction(a, nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                                         nn.Linear(64, 2)))
