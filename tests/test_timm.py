"""timm models (no weights downloaded) through perturbed_step under bf16 autocast."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

timm = pytest.importorskip("timm")

from forgetting_sam import OBF, SAM, perturbed_step  # noqa: E402

MODELS = {
    "vit": dict(model_name="vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48,
                depth=2, num_heads=2),
    "resnet": dict(model_name="resnet18", layers=(1, 1, 1, 1), channels=(8, 16, 32, 64),
                   stem_width=8),
    "convnext": dict(model_name="convnext_atto", dims=(16, 32, 48, 64), depths=(1, 1, 1, 1)),
}


def _bn_buffers(model):
    return {n: b.clone() for n, b in model.named_buffers() if "running" in n or "num_batches" in n}


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("opt_cls", [SAM, OBF])
def test_timm_model_steps_under_bf16(kind, opt_cls):
    torch.manual_seed(0)
    kw = dict(MODELS[kind])
    model = timm.create_model(kw.pop("model_name"), pretrained=False, num_classes=5, **kw)
    model.train()
    opt = opt_cls(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.05, momentum=0.9)
    x = torch.randn(4, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 3])
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(2):
        bn = _bn_buffers(model)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = perturbed_step(model, opt, x, y, F.cross_entropy)
        assert torch.isfinite(out.loss) and torch.isfinite(out.perturbed_loss)
        assert not out.skipped
        after = _bn_buffers(model)
        for name, value in bn.items():
            # BatchNorm moves once per step (the pass at w), never in the pass at w + ε
            if "num_batches" in name:
                assert int(after[name]) == int(value) + 1, name
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any((p - q).abs().max() > 0 for p, q in zip(model.parameters(), before))
    has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert has_bn == (kind == "resnet")
