"""The moving average of weights against its closed form, computed by brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anime_face_id.weight_average import WeightAverage, step_decay


def small_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))


def closed_form(trajectory: list[np.ndarray], decay: float) -> np.ndarray:
    """w_0 prod(d_1..d_n) + sum_i (1 - d_i) w_i prod(d_(i+1)..d_n), term by term."""
    n = len(trajectory) - 1
    decays = [step_decay(decay, i) for i in range(1, n + 1)]
    total = trajectory[0] * np.prod(decays)
    for i in range(1, n + 1):
        total = total + (1 - decays[i - 1]) * trajectory[i] * np.prod(decays[i:])
    return total


@pytest.mark.parametrize("decay", [0.5, 0.9, 0.999])
def test_the_average_matches_its_closed_form_over_a_random_trajectory(decay):
    net = small_net()
    average = WeightAverage(net, decay)
    rng = np.random.default_rng(1)
    names = [name for name, value in net.state_dict().items() if value.is_floating_point()]
    trajectory = {name: [net.state_dict()[name].numpy().copy()] for name in names}
    for _ in range(25):
        with torch.no_grad():
            for name in names:
                net.state_dict()[name].copy_(
                    torch.from_numpy(rng.normal(size=trajectory[name][0].shape))
                )
                trajectory[name].append(net.state_dict()[name].numpy().copy())
        average.update(net)
    for name in names:  # weights, biases and BatchNorm's running statistics alike
        expected = closed_form(trajectory[name], decay)
        np.testing.assert_allclose(
            average.model.state_dict()[name].numpy(), expected, rtol=1e-5, atol=1e-6
        )


def test_the_decay_ramps_up_so_early_updates_follow_the_network():
    assert step_decay(0.999, 1) == pytest.approx(2 / 11)
    assert step_decay(0.999, 90) == pytest.approx(91 / 100)
    assert step_decay(0.99, 10_000) == 0.99
    ramp = [step_decay(0.999, n) for n in range(1, 200)]
    assert ramp == sorted(ramp)


def test_integer_buffers_are_copied_and_the_network_itself_is_untouched():
    net = small_net()
    net.train()
    average = WeightAverage(net, 0.9)
    assert not average.model.training
    assert not any(param.requires_grad for param in average.model.parameters())
    before = {name: value.clone() for name, value in net.state_dict().items()}
    net(torch.randn(8, 3))  # one training-mode pass: BatchNorm counts it
    after = {name: value.clone() for name, value in net.state_dict().items()}
    average.update(net)
    assert average.model[1].num_batches_tracked.item() == 1
    assert all(torch.equal(after[name], value) for name, value in net.state_dict().items())
    assert not torch.equal(before["1.running_mean"], after["1.running_mean"])


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.1])
def test_a_decay_outside_the_open_unit_interval_is_refused(decay):
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(small_net(), decay)
