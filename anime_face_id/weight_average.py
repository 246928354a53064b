"""An exponential moving average of a network's weights (Polyak averaging), the copy that
is validated and kept when ``train.weight_average`` > 0.

With a few hundred optimiser steps on a few hundred pictures, each step's weights carry
the noise of its 32-image batch; their running average is a smoother network, which is
what the averaged copies of modern recipes (timm's ModelEmaV2, SWA) exploit.

After update n (counting from 1) the average moves towards the network by
``1 - d_n`` with ``d_n = min(decay, (1 + n) / (10 + n))`` (TensorFlow's
ExponentialMovingAverage with ``num_updates``): the early updates, when the average still
holds the random projection head, follow the network closely. The ramp reaches 0.98 only
after 440 updates, so on a few hundred steps it, rather than ``decay``, sets how far back
the average reaches (about the last tenth of the steps). Integer buffers (BatchNorm's
batch counter) are copied, not averaged.
"""

from __future__ import annotations

import copy

import torch


def step_decay(decay: float, update: int) -> float:
    """The decay of update ``update`` (from 1): ramps up to ``decay``."""
    return min(decay, (1.0 + update) / (10.0 + update))


class WeightAverage:
    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the weight average's decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval()
        for param in self.model.parameters():
            param.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        keep = step_decay(self.decay, self.updates)
        current = model.state_dict()
        for name, average in self.model.state_dict().items():
            value = current[name].detach()
            if average.dtype.is_floating_point:
                average.mul_(keep).add_(value, alpha=1.0 - keep)
            else:
                average.copy_(value)
