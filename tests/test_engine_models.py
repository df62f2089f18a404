"""Models of the engine: every builder at a tiny size, the paper's ViT options, known sizes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from forgetting_sam.engine.models import (
    MODELS,
    ViT,
    build_model,
    count_parameters,
    model_options,
)

# name -> (input_shape, tiny options). Every entry of MODELS must appear here.
TINY = {
    "mlp": ((2,), {"hidden_sizes": (8, 8)}),
    "cnn": ((1, 8, 8), {"width": 4}),
    "wrn16_8": ((3, 32, 32), {"depth": 10, "width": 1}),
    "wrn28_10": ((3, 32, 32), {"depth": 10, "width": 1, "dropout": 0.3}),
    "resnet18_cifar": ((3, 32, 32), {"width": 4}),
    "resnet50": ((3, 32, 32), {}),
    "resnet101": ((3, 32, 32), {}),
    "vit_s32": ((3, 32, 32), {"num_layers": 1, "hidden_dim": 16, "num_heads": 2, "mlp_dim": 32}),
    "vit_s16": ((3, 32, 32), {"num_layers": 1, "hidden_dim": 16, "num_heads": 2, "mlp_dim": 32}),
}


def test_every_model_has_a_tiny_config():
    assert set(TINY) == set(MODELS)


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_model_forward_and_backward(name):
    shape, options = TINY[name]
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, input_shape=shape, **options)
    x = torch.randn(2, *shape)
    out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.sum().backward()
    # every parameter takes part in the forward pass
    assert all(p.grad is not None for p in model.parameters())


def test_mlp_flattens_images_and_cnn_handles_32px():
    mlp = build_model("mlp", num_classes=10, input_shape=(1, 8, 8), hidden_sizes=(16,))
    assert mlp(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert count_parameters(mlp) == 64 * 16 + 16 + 16 * 10 + 10
    cnn = build_model("cnn", num_classes=10, input_shape=(3, 32, 32), width=4)
    assert any(isinstance(m, nn.BatchNorm2d) for m in cnn.modules())
    assert cnn(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_wide_resnet_and_resnet_parameter_counts_match_known_values():
    # Built on the meta device: no memory, no init cost. Known counts for 10 classes.
    with torch.device("meta"):
        wrn28 = build_model("wrn28_10", num_classes=10, input_shape=(3, 32, 32))
        wrn16 = build_model("wrn16_8", num_classes=10, input_shape=(3, 32, 32))
        r18 = build_model("resnet18_cifar", num_classes=10, input_shape=(3, 32, 32))
        r50 = build_model("resnet50", num_classes=1000, input_shape=(3, 224, 224))
        r101 = build_model("resnet101", num_classes=1000, input_shape=(3, 224, 224))
    assert count_parameters(wrn28) == 36_479_194  # "36.5M" in the WRN paper
    assert count_parameters(wrn16) == 10_961_370  # "11.0M"
    assert count_parameters(r18) == 11_173_962
    assert count_parameters(r50) == 25_557_032  # torchvision's documented size
    assert count_parameters(r101) == 44_549_160
    assert r18.conv1.kernel_size == (3, 3)  # CIFAR stem


def test_wrn_dropout_option_and_bad_depth():
    m = build_model(
        "wrn16_8", num_classes=10, input_shape=(3, 32, 32), depth=10, width=1, dropout=0.3
    )
    assert any(isinstance(x, nn.Dropout) and x.p == 0.3 for x in m.modules())
    with pytest.raises(ValueError, match="6n \\+ 4"):
        build_model("wrn16_8", num_classes=10, input_shape=(3, 32, 32), depth=12)


def test_vit_s_sizes_match_the_paper_configuration():
    with torch.device("meta"):
        s32 = build_model("vit_s32", num_classes=1000, input_shape=(3, 224, 224))
        s16_cls = build_model("vit_s16", num_classes=1000, input_shape=(3, 224, 224), pool="cls")
    assert isinstance(s32, ViT) and s32.hidden_dim == 384 and s32.mlp_dim == 1536
    assert len(s32.encoder.layers) == 12 and s32.encoder.layers[0].num_heads == 6
    assert s32.patch_size == 32 and s32.image_size == 224
    # GAP: 7x7 patch positions, no class token
    assert s32.encoder.pos_embedding.shape == (1, 49, 384) and not hasattr(s32, "class_token")
    assert s16_cls.encoder.pos_embedding.shape == (1, 197, 384) and s16_cls.class_token.shape == (
        1,
        1,
        384,
    )
    # ViT-S/16 with a class token is torchvision's well-known 22,050,664 parameters at 1000 classes
    assert count_parameters(s16_cls) == 22_050_664
    assert count_parameters(s32) == 22_878_952 - 2 * 384  # minus class token and its position


def test_vit_gap_is_the_mean_of_encoder_tokens_and_head_bias_is_set():
    shape, options = TINY["vit_s32"]
    torch.manual_seed(0)
    gap = build_model("vit_s32", num_classes=5, input_shape=shape, head_bias=-10.0, **options)
    assert torch.all(gap.heads.head.bias == -10.0)
    # torchvision zero-inits the classifier weight: initial logits are exactly the bias
    x = torch.randn(3, *shape)
    assert torch.equal(gap(x), torch.full((3, 5), -10.0))
    # independent computation of GAP: encoder over patch tokens, mean over tokens, head
    nn.init.normal_(gap.heads.head.weight)
    gap.eval()
    tokens = gap.conv_proj(x).flatten(2).transpose(1, 2)  # (N, patches, hidden)
    assert tokens.shape[1] == 1  # 32 px / patch 32
    tokens = gap.encoder.ln(gap.encoder.layers(tokens + gap.encoder.pos_embedding))
    expected = tokens.mean(1) @ gap.heads.head.weight.T + gap.heads.head.bias
    torch.testing.assert_close(gap(x), expected)

    # with several patches, GAP differs from reading the first token
    torch.manual_seed(0)
    s16 = build_model("vit_s16", num_classes=5, input_shape=shape, **options).eval()
    nn.init.normal_(s16.heads.head.weight)
    tok = s16.encoder(s16._process_input(x))
    assert tok.shape[1] == 4
    torch.testing.assert_close(s16(x), s16.heads(tok.mean(1)))
    assert not torch.allclose(s16(x), s16.heads(tok[:, 0]))

    cls = build_model("vit_s32", num_classes=5, input_shape=shape, pool="cls", **options)
    assert cls(x).shape == (3, 5) and hasattr(cls, "class_token")


def test_models_accept_other_channel_counts():
    vit = build_model(
        "vit_s16",
        num_classes=3,
        input_shape=(1, 16, 16),
        num_layers=1,
        hidden_dim=8,
        num_heads=2,
        mlp_dim=8,
    )
    assert vit(torch.randn(2, 1, 16, 16)).shape == (2, 3)
    r50 = build_model("resnet50", num_classes=3, input_shape=(1, 32, 32))
    assert r50.conv1.in_channels == 1


def test_bad_names_options_and_shapes():
    with pytest.raises(ValueError, match="valid names: mlp, cnn"):
        build_model("vgg16", num_classes=10, input_shape=(3, 32, 32))
    with pytest.raises(ValueError, match=r"Unknown option\(s\) \['widht'\].*width"):
        build_model("cnn", num_classes=10, input_shape=(3, 32, 32), widht=4)
    with pytest.raises(ValueError, match="use 'mlp'"):
        build_model("cnn", num_classes=2, input_shape=(2,))
    with pytest.raises(ValueError, match="image_size=224"):
        build_model("vit_s32", num_classes=10, input_shape=(3, 32, 32), image_size=224)
    with pytest.raises(ValueError, match="patch_size"):
        build_model("vit_s16", num_classes=10, input_shape=(3, 40, 40))
    with pytest.raises(ValueError, match="pool"):
        build_model("vit_s32", num_classes=10, input_shape=(3, 32, 32), pool="max")
    with pytest.raises(ValueError, match="num_classes"):
        build_model("mlp", num_classes=0, input_shape=(2,))
    assert model_options("vit_s32")["pool"] == "gap"
    assert "dropout" in model_options("wrn28_10")
