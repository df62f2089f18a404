"""Models for the training engine, by name.

``build_model(name, num_classes=K, input_shape=shape, **options)`` builds any entry of
:data:`MODELS`:

=================  ==========================================================================
name               model
=================  ==========================================================================
mlp                fully connected net; flattens its input (toy 2-D data, digits)
cnn                small conv net with BatchNorm (8x8 digits, 32x32 CIFAR)
wrn16_8, wrn28_10  Wide ResNets for CIFAR (Zagoruyko & Komodakis), option ``dropout``
resnet18_cifar     ResNet-18 with a 3x3 stem and no max-pool, for 32x32 images
resnet50/101       ``torchvision.models.resnet50/101`` (no pretrained weights)
vit_s32, vit_s16   ViT-S (hidden 384, 12 layers, 6 heads, MLP 1536) on
                   ``torchvision.models.VisionTransformer``; ``pool="gap"`` or ``"cls"``,
                   ``head_bias`` (the paper: -10 with sigmoid BCE)
=================  ==========================================================================

Every builder takes size overrides (``width``, ``depth``, ViT ``num_layers`` ...) so tests can
build it tiny. Example::

    model = build_model("vit_s32", num_classes=1000, input_shape=(3, 224, 224),
                        pool="gap", head_bias=-10.0)
    model(torch.randn(2, 3, 224, 224)).shape  # (2, 1000)
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torchvision.models import VisionTransformer

from .config import ConfigError

__all__ = [
    "MLP",
    "MODELS",
    "CifarResNet",
    "SmallCNN",
    "ViT",
    "WideResNet",
    "build_model",
    "check_model_options",
    "count_parameters",
    "model_options",
]


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of scalar parameters in ``model`` (works on the 'meta' device too).

    ``trainable_only=True`` counts only parameters with ``requires_grad``.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _image_shape(name: str, input_shape: Sequence[int]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ValueError(
            f"model {name!r} needs image input_shape (C, H, W), got {tuple(input_shape)}; "
            "use 'mlp' for tabular or 2-D toy data"
        )
    return tuple(int(s) for s in input_shape)  # type: ignore[return-value]


def _init_conv_bn(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------
# MLP and small CNN
# --------------------------------------------------------------------------------------------


class MLP(nn.Module):
    """Flatten, then ``Linear -> ReLU (-> Dropout)`` per hidden size, then a linear head.

    Input (N, *input_shape); output (N, num_classes).
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden_sizes: Sequence[int] = (256, 256),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden_sizes:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """``depth`` blocks of ``Conv3x3 -> BatchNorm -> ReLU`` with widths ``width * 2**i``.

    A 2x2 max-pool follows each block but the last while the feature map is at least 8 px,
    so 8x8 digits pool once and 32x32 images twice; then global average pooling and a linear
    head. Input (N, C, H, W); output (N, num_classes).
    """

    def __init__(
        self, in_channels: int, num_classes: int, image_hw: int, width: int = 32, depth: int = 3
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = in_channels, image_hw
        for i in range(depth):
            out = width * 2**i
            layers += [
                nn.Conv2d(channels, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            if i < depth - 1 and size >= 8:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        _init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


# --------------------------------------------------------------------------------------------
# Wide ResNet (pre-activation) and CIFAR ResNet-18
# --------------------------------------------------------------------------------------------


class _WideBlock(nn.Module):
    # Pre-activation basic block: BN-ReLU-conv-BN-ReLU-dropout-conv, plus a 1x1 projection
    # of the pre-activated input when the shape changes (as in the WRN paper's code).
    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.bn1(x))
        out = self.conv1(a)
        out = self.conv2(self.dropout(torch.relu(self.bn2(out))))
        return out + (x if self.shortcut is None else self.shortcut(a))


class WideResNet(nn.Module):
    """WRN-``depth``-``width`` for 32x32 images: ``(depth - 4) / 6`` blocks per stage.

    Stage widths are 16·width, 32·width, 64·width. WRN-28-10 has 36.5M parameters and
    WRN-16-8 11.0M (10 classes). Input (N, C, H, W); output (N, num_classes).
    """

    def __init__(
        self,
        depth: int,
        width: int,
        num_classes: int,
        in_channels: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(
                f"Wide ResNet depth must be 6n + 4 with n >= 1 (10, 16, 28, ...), got {depth}"
            )
        if width < 1:
            raise ValueError(f"Wide ResNet width must be a positive int, got {width}")
        n = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        in_planes = widths[0]
        for stage, stride in zip(range(3), (1, 2, 2)):
            for b in range(n):
                blocks.append(
                    _WideBlock(in_planes, widths[stage + 1], stride if b == 0 else 1, dropout)
                )
                in_planes = widths[stage + 1]
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(in_planes)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        _init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn(self.blocks(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(out), 1))


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet with basic blocks for 32x32 images: 3x3 stem, no max-pool, 4 stages.

    ``blocks=(2, 2, 2, 2)`` and ``width=64`` give ResNet-18 (11.2M parameters, 10 classes).
    Input (N, C, H, W); output (N, num_classes).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        blocks: Sequence[int] = (2, 2, 2, 2),
        width: int = 64,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers: list[nn.Module] = []
        in_planes = width
        for stage, n in enumerate(blocks):
            planes = width * 2**stage
            for b in range(n):
                layers.append(_BasicBlock(in_planes, planes, 2 if (b == 0 and stage > 0) else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        _init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(out), 1))


# --------------------------------------------------------------------------------------------
# Vision Transformer with the paper's options
# --------------------------------------------------------------------------------------------


class ViT(VisionTransformer):
    """``torchvision.models.VisionTransformer`` with global average pooling and a head bias.

    Args:
        pool: ``"gap"`` (no class token; the classifier sees the mean of the encoder's output
            tokens, after its final LayerNorm, as in big_vision) or ``"cls"`` (torchvision's
            class token).
        head_bias: initial value of every classifier bias. The classifier weight starts at
            zero (torchvision's init), so initial logits all equal ``head_bias``; the paper
            uses -10 with sigmoid BCE so that initial probabilities are ~4.5e-5.
        in_channels: image channels (torchvision fixes 3; others replace the patch projection).
        **kwargs: ``VisionTransformer`` arguments (image_size, patch_size, num_layers, ...).

    Input (N, C, image_size, image_size); output (N, num_classes).
    """

    def __init__(
        self, *, pool: str = "gap", head_bias: float = 0.0, in_channels: int = 3, **kwargs
    ) -> None:
        if pool not in ("gap", "cls"):
            raise ValueError(f"Invalid pool: {pool!r} (allowed: 'gap', 'cls')")
        super().__init__(**kwargs)
        self.pool = pool
        if pool == "gap":
            # Without a class token the sequence is the patches alone: drop the token and its
            # position embedding (the rest of the BERT-style N(0, 0.02) init is unchanged).
            del self.class_token
            self.seq_length -= 1
            self.encoder.pos_embedding = nn.Parameter(
                self.encoder.pos_embedding.detach()[:, 1:].clone()
            )
        if in_channels != 3:
            p = self.patch_size
            self.conv_proj = nn.Conv2d(in_channels, self.hidden_dim, kernel_size=p, stride=p)
            nn.init.trunc_normal_(self.conv_proj.weight, std=math.sqrt(1 / (in_channels * p * p)))
            nn.init.zeros_(self.conv_proj.bias)
        nn.init.constant_(self.heads.head.bias, float(head_bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool == "cls":
            return super().forward(x)
        tokens = self.encoder(self._process_input(x))  # (N, patches, hidden), LayerNorm'd
        return self.heads(tokens.mean(dim=1))


# --------------------------------------------------------------------------------------------
# Builders: keyword-only options; build_model checks names against their signatures.
# --------------------------------------------------------------------------------------------


def _mlp(*, num_classes, input_shape, hidden_sizes=(256, 256), dropout=0.0):
    return MLP(math.prod(input_shape), num_classes, tuple(hidden_sizes), dropout)


def _cnn(*, num_classes, input_shape, width=32, depth=3):
    c, h, _ = _image_shape("cnn", input_shape)
    return SmallCNN(c, num_classes, h, width=width, depth=depth)


def _wrn(default_depth: int, default_width: int, name: str) -> Callable[..., nn.Module]:
    def build(*, num_classes, input_shape, depth=default_depth, width=default_width, dropout=0.0):
        c = _image_shape(name, input_shape)[0]
        return WideResNet(depth, width, num_classes, in_channels=c, dropout=dropout)

    build.__name__ = f"_{name}"
    return build


def _resnet18_cifar(*, num_classes, input_shape, width=64, blocks=(2, 2, 2, 2)):
    c = _image_shape("resnet18_cifar", input_shape)[0]
    return CifarResNet(num_classes, in_channels=c, blocks=tuple(blocks), width=width)


def _torchvision_resnet(arch: str) -> Callable[..., nn.Module]:
    def build(*, num_classes, input_shape, zero_init_residual=False):
        from torchvision import models

        c = _image_shape(arch, input_shape)[0]
        model = getattr(models, arch)(
            weights=None, num_classes=num_classes, zero_init_residual=zero_init_residual
        )
        if c != 3:
            model.conv1 = nn.Conv2d(c, 64, kernel_size=7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        return model

    build.__name__ = f"_{arch}"
    return build


def _vit(default_patch: int, name: str) -> Callable[..., nn.Module]:
    def build(
        *,
        num_classes,
        input_shape,
        image_size=None,
        patch_size=default_patch,
        num_layers=12,
        hidden_dim=384,
        num_heads=6,
        mlp_dim=1536,
        dropout=0.0,
        attention_dropout=0.0,
        pool="gap",
        head_bias=0.0,
    ):
        c, h, w = _image_shape(name, input_shape)
        if h != w:
            raise ValueError(f"{name} needs square images, got input_shape {tuple(input_shape)}")
        if image_size is None:
            image_size = h  # 224 for ImageNet-shaped data
        elif image_size != h:
            raise ValueError(
                f"{name}: image_size={image_size} but the data are {h}x{w} (input_shape "
                f"{tuple(input_shape)}); pass image_size={image_size} to the data too, or drop it"
            )
        if image_size % patch_size != 0:
            raise ValueError(
                f"{name}: image_size={image_size} is not a multiple of patch_size={patch_size}"
            )
        if hidden_dim % num_heads != 0:
            raise ValueError(
                f"{name}: hidden_dim={hidden_dim} is not divisible by num_heads={num_heads}"
            )
        return ViT(
            pool=pool,
            head_bias=head_bias,
            in_channels=c,
            image_size=image_size,
            patch_size=patch_size,
            num_layers=num_layers,
            num_heads=num_heads,
            hidden_dim=hidden_dim,
            mlp_dim=mlp_dim,
            dropout=dropout,
            attention_dropout=attention_dropout,
            num_classes=num_classes,
        )

    build.__name__ = f"_{name}"
    return build


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": _mlp,
    "cnn": _cnn,
    "wrn16_8": _wrn(16, 8, "wrn16_8"),
    "wrn28_10": _wrn(28, 10, "wrn28_10"),
    "resnet18_cifar": _resnet18_cifar,
    "resnet50": _torchvision_resnet("resnet50"),
    "resnet101": _torchvision_resnet("resnet101"),
    "vit_s32": _vit(32, "vit_s32"),
    "vit_s16": _vit(16, "vit_s16"),
}


def model_options(name: str) -> dict[str, object]:
    """The options ``name`` accepts, with their defaults (for ``--help`` and error messages)."""
    if name not in MODELS:
        raise ConfigError(f"Unknown model {name!r}; valid names: {', '.join(MODELS)}")
    params = inspect.signature(MODELS[name]).parameters.values()
    return {p.name: p.default for p in params if p.name not in ("num_classes", "input_shape")}


def check_model_options(name: str, options: dict) -> None:
    """Raise :class:`ConfigError` for an unknown model, an unknown option or an option value
    of the wrong kind (``hidden_sizes=abc``, ``hidden_sizes=[0]``, ``dropout=2``)."""
    accepted = model_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"Unknown option(s) {unknown} for model {name!r}; valid options: "
            f"{', '.join(accepted) or 'none'}"
        )
    for key, value in options.items():
        _check_option(name, key, value, accepted[key])


def build_model(name: str, *, num_classes: int, input_shape: Sequence[int], **options) -> nn.Module:
    """Build model ``name`` (a key of :data:`MODELS`) for ``num_classes`` outputs.

    Args:
        name: e.g. "cnn", "wrn16_8", "vit_s32".
        num_classes: K, the width of the output logits.
        input_shape: one example's shape, ``(C, H, W)`` or ``(D,)`` (``DataBundle.input_shape``).
        **options: model-specific; see :func:`model_options`.

    Returns:
        An ``nn.Module`` mapping ``(N, *input_shape)`` to logits ``(N, K)``.

    Example::

        build_model("cnn", num_classes=10, input_shape=(1, 8, 8), width=16)
    """
    check_model_options(name, options)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    input_shape = tuple(int(s) for s in input_shape)
    if not input_shape or min(input_shape) < 1:
        raise ValueError(
            f"input_shape must be a non-empty tuple of positive ints, got {input_shape}"
        )
    try:
        return MODELS[name](num_classes=num_classes, input_shape=input_shape, **options)
    except ValueError as e:  # the builders' own consistency checks (patch vs image size, ...)
        raise ConfigError(f"model_options for {name!r}: {e}") from None


def _check_option(model: str, key: str, value, default) -> None:
    """Reject a model option whose value does not fit its default's kind, before any layer is
    built (a raw ``TypeError`` from ``torch.empty``, or a zero-width layer that trains silently)."""
    where = f"model_options {key}={value!r} for model {model!r}"
    if isinstance(default, bool):
        ok, want = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        want = "a positive int"
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        want = "a finite number"
        if ok and "dropout" in key:
            ok, want = 0 <= value < 1, "a rate in [0, 1)"
    elif isinstance(default, tuple):
        # An MLP without hidden layers is a linear model; every other sequence needs an entry.
        ok = (isinstance(value, (list, tuple)) and (len(value) > 0 or key == "hidden_sizes")
              and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value))
        want = f"a non-empty list of positive ints like {list(default)}"
    elif isinstance(default, str):
        ok, want = isinstance(value, str), "a string"
    elif default is None:  # optional ints (ViT's image_size)
        ok = value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)
        want = "a positive int or none"
    else:
        return
    if not ok:
        raise ConfigError(f"{where}: must be {want}")
