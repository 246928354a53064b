"""Placing a network on its device: channels-last weights on CPU (benchmarks/memory_format.py
for why), with the outputs and gradients of the default layout, and the same after a
checkpoint's round trip."""

from __future__ import annotations

import pytest
import torch

from anime_face_id.checkpoint import load_checkpoint, save_checkpoint
from anime_face_id.config import TrainParams
from anime_face_id.device import place
from anime_face_id.faces.centernet import FaceCenterNet
from anime_face_id.model import build_embedder


def _conv_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.ndim == 4]


def _embedder() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_embedder(TrainParams(image_size=64), pretrained=False)


def _centernet() -> torch.nn.Module:
    torch.manual_seed(0)
    return FaceCenterNet()


def _outputs(model: torch.nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    out = model(images)
    return list(out) if isinstance(out, (tuple, list)) else [out]


@pytest.mark.parametrize("build", [_embedder, _centernet], ids=["embedder", "centernet"])
def test_placed_on_cpu_the_weights_are_channels_last_and_compute_the_same(build):
    reference, placed = build().eval(), place(build(), "cpu").eval()
    weights = _conv_weights(placed)
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    assert not all(w.is_contiguous() for w in weights)  # the layout did change
    torch.manual_seed(1)
    images = torch.rand(2, 3, 64, 64)  # the callers' plain NCHW batches
    with torch.inference_mode():
        for want, got in zip(_outputs(reference, images), _outputs(placed, images), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # and the same gradients: eval mode, as train-mode BatchNorm on a batch of two turns the
    # last float digits into percent; a loss that depends on every output (an L2-normalised
    # embedding's squared sum would not)
    gradients = [_gradients(model, images) for model in (reference, placed)]
    error = (gradients[1] - gradients[0]).norm() / gradients[0].norm()
    assert error < 1e-4, float(error)


def _gradients(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    draws = torch.Generator().manual_seed(3)
    outputs = _outputs(model, images)
    sum((o * torch.randn(o.shape, generator=draws)).sum() for o in outputs).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_a_checkpoint_saved_channels_last_loads_with_the_same_weights(tmp_path):
    model = place(_embedder(), "cpu")
    path = tmp_path / "embedder.pt"
    save_checkpoint(path, model, TrainParams(image_size=64), ["a", "b"], 1, {})
    loaded = load_checkpoint(path, "cpu")
    for (name, want), got in zip(
        model.state_dict().items(), loaded.model.state_dict().values(), strict=True
    ):
        assert torch.equal(got, want), name
    assert all(
        w.is_contiguous(memory_format=torch.channels_last) for w in _conv_weights(loaded.model)
    )
