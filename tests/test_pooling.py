"""anime_face_id/model/pooling.py against brute-force references, and GeM in the embedder."""

from __future__ import annotations

import itertools

import pytest
import torch

from anime_face_id.config import TrainConfig
from anime_face_id.model.embedder import build_embedder
from anime_face_id.model.pooling import GeneralisedMean, build_pooling


def brute_force_gem(maps: torch.Tensor, p: float) -> torch.Tensor:
    batch, channels, height, width = maps.shape
    out = torch.empty(batch, channels, dtype=torch.float64)
    for b, c in itertools.product(range(batch), range(channels)):
        values = [float(maps[b, c, y, x]) for y in range(height) for x in range(width)]
        out[b, c] = (sum(v**p for v in values) / len(values)) ** (1 / p)
    return out


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, 4.5])
def test_gem_is_the_generalised_mean_of_each_channel(p):
    generator = torch.Generator().manual_seed(int(p * 10))
    maps = torch.rand(3, 5, 4, 6, generator=generator, dtype=torch.float64) * 6  # ReLU6 range
    pool = GeneralisedMean(p).double()
    assert torch.allclose(pool(maps), brute_force_gem(maps, p), rtol=1e-9)


def test_gem_lies_between_the_average_and_the_maximum_and_rises_with_p():
    maps = torch.rand(2, 7, 5, 5) * 6
    average, maximum = maps.mean(dim=(2, 3)), maps.amax(dim=(2, 3))
    assert torch.allclose(GeneralisedMean(1.0)(maps), average, atol=1e-6)
    assert torch.allclose(build_pooling("average")(maps), average)
    pooled = [GeneralisedMean(p)(maps) for p in (1.0, 2.0, 3.0, 8.0, 64.0)]
    for lower, higher in itertools.pairwise(pooled):
        assert bool((lower <= higher + 1e-5).all())
    assert bool((pooled[-1] <= maximum + 1e-5).all())
    assert torch.allclose(pooled[-1], maximum, rtol=0.1)


def test_gem_p_is_learned_and_zeros_keep_a_gradient():
    pool = GeneralisedMean()
    maps = torch.rand(2, 3, 4, 4) * 6
    maps[0, 0] = 0.0  # a channel that never fired: the clamp keeps the loss finite
    pool(maps).sum().backward()
    assert pool.p.grad is not None and torch.isfinite(pool.p.grad)


def test_an_embedder_with_gem_trains_its_p_with_the_head_and_keeps_the_backbone_keys():
    average = build_embedder(TrainConfig(pretrained=False, embedding_dim=8))
    gem = build_embedder(TrainConfig(pretrained=False, embedding_dim=8, pooling="gem"))
    extra = set(gem.state_dict()) - set(average.state_dict())
    assert extra == {"pool.p"}  # so average-pooled checkpoints load as before
    gem.train()
    projected, _ = gem.training_outputs(torch.randn(4, 3, 64, 64))
    projected.sum().backward()
    assert gem.pool.p.grad is not None and gem.pool.p.grad != 0


def test_unknown_pooling_is_refused():
    with pytest.raises(ValueError, match="unknown pooling 'max'"):
        build_pooling("max")
    with pytest.raises(ValueError, match="pooling"):
        TrainConfig(pooling="max")
