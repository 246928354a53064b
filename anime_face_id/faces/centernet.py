"""A small CenterNet face detector on the ImageNet-pretrained EfficientNet-Lite0.

One class (face), one output scale (stride 8 in the shipped weights, or 4), three heads, as
in Zhou et al. 2019, "Objects as Points": a centre heatmap, the box size and the sub-cell
offset of the centre. The backbone's stride-8, 16 and 32 features (and its stride-4 ones for
a stride-4 output) are merged top-down (an FPN, 64 channels in the shipped weights) so that
an output cell still sees the whole head around it.

Everything here is plain torch: decoding and non-maximum suppression included (torchvision
cannot load beside the CPU torch build, see DESIGN.md).
"""

from __future__ import annotations

import hashlib
import io
import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from anime_face_id.fileio import atomic_write_bytes
from anime_face_id.model.efficientnet_lite import (
    LITE0_STAGES,
    SameConv2d,
    _batch_norm,
    _build_blocks,
)
from anime_face_id.transforms import FILL_VALUE, normalise

STRIDE = 8  # the output stride of the shipped weights, and of files that do not say
STRIDES = (4, 8)  # CenterNet's own output stride is 4: finer cells for small faces
NECK_CHANNELS = 64
# What a weights file or a training config may ask for (a hostile file must not make the
# loader build a network of gigabytes before its keys are checked).
NECK_CHANNEL_RANGE = (8, 512)
HEAD_CONV_RANGE = (1, 4)
# Last block of each tapped stage: stride 8 (40 ch), 16 (112 ch), 32 (320 ch).
TAPS = (4, 10, 15)
TAP_CHANNELS = (40, 112, 320)
# A stride-4 output also taps the last block at stride 4 (24 ch).
FINE_TAP, FINE_TAP_CHANNELS = 2, 24
# The heatmap's initial prior (focal-loss papers start rare classes near 0.1 so the
# first steps are not swamped by the background).
HEATMAP_PRIOR = 0.1


class Lite0Trunk(nn.Module):
    """EfficientNet-Lite0 up to its last block, without the 1280-channel head.

    Module names match the ImageNet checkpoint so the pretrained weights load by name.
    """

    def __init__(self):
        super().__init__()
        self._conv_stem = SameConv2d(3, LITE0_STAGES[0].in_channels, 3, stride=2)
        self._bn0 = _batch_norm(LITE0_STAGES[0].in_channels)
        self._blocks = _build_blocks(LITE0_STAGES)

    def forward(self, x: torch.Tensor, fine: bool = False) -> list[torch.Tensor]:
        """The tapped features, finest first: stride 8, 16, 32 (and 4 before them if
        ``fine``)."""
        tapped = (FINE_TAP, *TAPS) if fine else TAPS
        x = F.relu6(self._bn0(self._conv_stem(x)))
        taps = []
        for index, block in enumerate(self._blocks):
            x = block(x)
            if index in tapped:
                taps.append(x)
        return taps


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _separable(channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
        _conv_bn_relu(channels, channels, 1),
    )


def _head(channels: int, convs: int, out_channels: int, bias: float = 0.0) -> nn.Sequential:
    last = nn.Conv2d(channels, out_channels, 1)
    nn.init.normal_(last.weight, std=0.01)
    nn.init.constant_(last.bias, bias)
    return nn.Sequential(*(_separable(channels) for _ in range(convs)), last)


class FaceCenterNet(nn.Module):
    """``forward(x)`` -> (heatmap logits (B,1,h,w), log size (B,2,h,w), offset (B,2,h,w)).

    Size is ``log(w / stride), log(h / stride)``; offset is the centre's position from the
    cell's corner in cells: 0..1 at the centre's own cell, which decoding reads (trained with
    a ``giou_weight``, the cells around it predict the same box, offsets beyond 0..1).
    Input: (B, 3, H, W) normalised as the embedder's, H and W multiples of 32.

    ``neck_channels`` (the FPN's width) and ``head_convs`` (separable 3x3 convolutions per
    head) size what is trained from scratch on top of the ImageNet trunk, ``stride`` (8 or
    4) the output grid; the weights file records them (``architecture``). A stride-4 model
    is a stride-8 one plus one lateral (``fine``), so it can start from stride-8 weights.
    """

    def __init__(self, neck_channels: int = NECK_CHANNELS, head_convs: int = 1, stride: int = 8):
        super().__init__()
        if stride not in STRIDES:
            raise ValueError(f"output stride must be one of {STRIDES}, not {stride}")
        self.architecture = {"neck_channels": neck_channels, "head_convs": head_convs}
        if stride != STRIDE:  # files of stride 8 say nothing, as before strides were chosen
            self.architecture["stride"] = stride
        self.stride = stride
        self.trunk = Lite0Trunk()
        self.laterals = nn.ModuleList(
            _conv_bn_relu(channels, neck_channels, 1) for channels in TAP_CHANNELS
        )
        self.fine = _conv_bn_relu(FINE_TAP_CHANNELS, neck_channels, 1) if stride == 4 else None
        self.smooth = _separable(neck_channels)
        prior = -math.log((1 - HEATMAP_PRIOR) / HEATMAP_PRIOR)
        self.heatmap = _head(neck_channels, head_convs, 1, bias=prior)
        self.size = _head(neck_channels, head_convs, 2)
        self.offset = _head(neck_channels, head_convs, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        taps = self.trunk(x, fine=self.fine is not None)
        laterals = [*([self.fine] if self.fine is not None else []), *self.laterals]
        merged = laterals[-1](taps[-1])
        for tap, lateral in zip(reversed(taps[:-1]), reversed(laterals[:-1]), strict=True):
            merged = lateral(tap) + F.interpolate(merged, size=tap.shape[-2:], mode="nearest")
        features = self.smooth(merged)
        return self.heatmap(features), self.size(features), self.offset(features)


def load_trunk_imagenet_weights(model: FaceCenterNet) -> None:
    """Start the trunk from the shipped ImageNet weights (every trunk key matched)."""
    from anime_face_id.model.efficientnet_lite import imagenet_weights_path

    state = torch.load(imagenet_weights_path(), map_location="cpu", weights_only=True)
    wanted = model.trunk.state_dict().keys()
    missing = [key for key in wanted if key not in state]
    if missing:
        raise RuntimeError(f"ImageNet checkpoint lacks trunk keys: {missing[:5]}")
    model.trunk.load_state_dict({key: state[key] for key in wanted}, strict=True)


def decode(
    heatmap_logits: torch.Tensor,
    log_size: torch.Tensor,
    offset: torch.Tensor,
    *,
    top_k: int = 100,
    min_score: float = 0.3,
    stride: int = STRIDE,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per image: boxes (N, 4) as ``x, y, w, h`` in input pixels, and their scores (N,).

    A peak is a cell whose score is the maximum of its 3 x 3 neighbourhood; the best
    ``top_k`` peaks at or above ``min_score`` become boxes. ``stride``: the maps' cell in
    input pixels.
    """
    scores = torch.sigmoid(heatmap_logits)
    peaks = scores == F.max_pool2d(scores, 3, stride=1, padding=1)
    scores = scores * peaks
    batch, _, _, width = scores.shape
    results = []
    for index in range(batch):
        flat = scores[index, 0].reshape(-1)
        k = min(top_k, flat.numel())
        best, cells = flat.topk(k)
        keep = best >= min_score
        best, cells = best[keep], cells[keep]
        rows = torch.div(cells, width, rounding_mode="floor")
        cols = cells % width
        dx = offset[index, 0, rows, cols]
        dy = offset[index, 1, rows, cols]
        w = log_size[index, 0, rows, cols].clamp(max=10).exp() * stride
        h = log_size[index, 1, rows, cols].clamp(max=10).exp() * stride
        cx = (cols.to(w.dtype) + dx) * stride
        cy = (rows.to(h.dtype) + dy) * stride
        boxes = torch.stack([cx - w / 2, cy - h / 2, w, h], dim=1)
        results.append((boxes, best))
    return results


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of ``x, y, w, h`` boxes: (N, 4) x (M, 4) -> (N, M)."""
    left = torch.maximum(a[:, None, 0], b[None, :, 0])
    top = torch.maximum(a[:, None, 1], b[None, :, 1])
    right = torch.minimum(a[:, None, 0] + a[:, None, 2], b[None, :, 0] + b[None, :, 2])
    bottom = torch.minimum(a[:, None, 1] + a[:, None, 3], b[None, :, 1] + b[None, :, 3])
    inter = (right - left).clamp(min=0) * (bottom - top).clamp(min=0)
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None, :] - inter
    return torch.where(union > 0, inter / union, torch.zeros_like(inter))


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices of the boxes kept by greedy non-maximum suppression, best score first.

    A box is dropped when it overlaps an already kept, higher-scoring box by more than
    ``iou_threshold``. Ties keep the earlier index (stable sort).
    """
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    overlaps = box_iou(boxes[order], boxes[order])
    suppressed = torch.zeros(len(order), dtype=torch.bool, device=boxes.device)
    kept = []
    for position in range(len(order)):
        if suppressed[position]:
            continue
        kept.append(order[position])
        suppressed |= overlaps[position] > iou_threshold
    return torch.stack(kept)


def prepare_input(rgb, input_size: int) -> tuple[torch.Tensor, float]:
    """Scale a picture so its longest side is ``input_size``, pad right and bottom to a
    multiple of 32, normalise: (1, 3, H, W) and the scale applied."""

    height, width = rgb.shape[:2]
    scale = input_size / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(rgb, (new_w, new_h), interpolation=interpolation)
    padded_h, padded_w = -(-new_h // 32) * 32, -(-new_w // 32) * 32
    canvas = np.full((padded_h, padded_w, 3), FILL_VALUE, dtype=np.uint8)
    canvas[:new_h, :new_w] = resized
    return normalise(canvas)[None], scale


@torch.inference_mode()
def detect_boxes(
    model: FaceCenterNet,
    rgb,
    *,
    input_size: int,
    min_score: float,
    nms_iou: float,
    top_k: int = 100,
) -> list[tuple[float, float, float, float, float]]:
    """Faces in an H x W x 3 uint8 RGB array: ``(x, y, w, h, score)`` in its pixels, best
    first, clipped to the picture."""
    height, width = rgb.shape[:2]
    batch, scale = prepare_input(rgb, input_size)
    device = next(model.parameters()).device  # the picture goes where the model is
    outputs = model(batch.to(device))
    boxes, scores = decode(*outputs, top_k=top_k, min_score=min_score, stride=model.stride)[0]
    keep = nms(boxes, scores, nms_iou)
    boxes, scores = boxes[keep] / scale, scores[keep]
    found = []
    for (x, y, w, h), score in zip(boxes.tolist(), scores.tolist(), strict=True):
        left, top = max(0.0, x), max(0.0, y)
        right, bottom = min(float(width), x + w), min(float(height), y + h)
        if right - left >= 1 and bottom - top >= 1:
            found.append((left, top, right - left, bottom - top, score))
    return found


WEIGHTS_FORMAT = "anime-face-id/centernet-lite0/1"


def save_weights(model: FaceCenterNet, path, metadata: dict) -> str:
    """Half-precision weights (a few MB) plus how they were made, written atomically;
    returns the sha256 of the bytes written."""

    state = {
        key: (value.half() if value.is_floating_point() else value).cpu()
        for key, value in model.state_dict().items()
    }
    payload = {
        "format": WEIGHTS_FORMAT,
        "state_dict": state,
        "architecture": dict(model.architecture),
        "metadata": metadata,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def checked_architecture(architecture: object, where) -> dict[str, int]:
    """``architecture`` as FaceCenterNet's keyword arguments, or a ValueError."""
    allowed = {
        "neck_channels": range(NECK_CHANNEL_RANGE[0], NECK_CHANNEL_RANGE[1] + 1),
        "head_convs": range(HEAD_CONV_RANGE[0], HEAD_CONV_RANGE[1] + 1),
        "stride": STRIDES,
    }
    if not isinstance(architecture, dict) or not set(architecture) <= set(allowed):
        raise ValueError(f"{where}: unknown detector architecture {architecture!r}")
    for key, value in architecture.items():
        if type(value) is not int or value not in allowed[key]:
            raise ValueError(f"{where}: unusable detector architecture {architecture!r}")
    return architecture


def load_weights(path) -> tuple[FaceCenterNet, dict]:
    """The detector in eval mode (float32) and its metadata; every key must match."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != WEIGHTS_FORMAT:
        raise ValueError(f"{path} is not a CenterNet face detector weights file ({WEIGHTS_FORMAT})")
    # files written before the architecture was recorded hold the first one
    model = FaceCenterNet(**checked_architecture(payload.get("architecture", {}), path))
    state = {
        key: value.float() if value.is_floating_point() else value
        for key, value in payload["state_dict"].items()
    }
    model.load_state_dict(state, strict=True)
    return model.eval(), dict(payload.get("metadata", {}))
