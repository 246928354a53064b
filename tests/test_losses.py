"""Triplet losses against brute-force references written as explicit loops over anchors,
positives and negatives, on many small random batches (including classes with a single
item and batches of one class), plus the degenerate cases training will meet."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.losses import TripletMarginLoss
from pytorch_metric_learning.miners import BatchHardMiner
from pytorch_metric_learning.reducers import MeanReducer

from anime_face_id.config import TrainConfig
from anime_face_id.losses import (
    LossStats,
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    make_loss,
    pairwise_distances,
)

MARGINS = [0.15, 0.5, "soft"]


def reference_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(sum((a[i] - b[i]) ** 2 for i in range(len(a))))


def reference_term(gap: torch.Tensor, margin) -> torch.Tensor:
    if margin == "soft":
        return torch.log1p(torch.exp(gap))
    return torch.clamp(gap + margin, min=0.0)


def reference_batch_hard(embeddings: torch.Tensor, labels: list[int], margin):
    """(loss, active fraction, mean hardest d_ap, mean hardest d_an, valid anchors) or None."""
    n = len(labels)
    terms, actives, positives, negatives = [], [], [], []
    for a in range(n):
        pos = [
            reference_distance(embeddings[a], embeddings[p])
            for p in range(n)
            if p != a and labels[p] == labels[a]
        ]
        neg = [
            reference_distance(embeddings[a], embeddings[x])
            for x in range(n)
            if labels[x] != labels[a]
        ]
        if not pos or not neg:
            continue
        hardest_pos = max(pos, key=lambda d: float(d.detach()))
        hardest_neg = min(neg, key=lambda d: float(d.detach()))
        gap = hardest_pos - hardest_neg
        terms.append(reference_term(gap, margin))
        gap_value = float(gap.detach())
        actives.append(gap_value > 0 if margin == "soft" else gap_value + margin > 0)
        positives.append(float(hardest_pos.detach()))
        negatives.append(float(hardest_neg.detach()))
    if not terms:
        return None
    return (
        sum(terms) / len(terms),
        np.mean(actives),
        np.mean(positives),
        np.mean(negatives),
        len(terms),
    )


def reference_batch_all(embeddings: torch.Tensor, labels: list[int], margin):
    n = len(labels)
    distance = [
        [reference_distance(embeddings[i], embeddings[j]) for j in range(n)] for i in range(n)
    ]
    terms, actives, positives, negatives = [], [], [], []
    for a in range(n):
        for p in range(n):
            if p == a or labels[p] != labels[a]:
                continue
            for x in range(n):
                if labels[x] == labels[a]:
                    continue
                d_ap, d_an = distance[a][p], distance[a][x]
                gap = d_ap - d_an
                terms.append(reference_term(gap, margin))
                gap_value = float(gap.detach())
                actives.append(gap_value > 0 if margin == "soft" else gap_value + margin > 0)
                positives.append(float(d_ap.detach()))
                negatives.append(float(d_an.detach()))
    if not terms:
        return None
    return (
        sum(terms) / len(terms),
        np.mean(actives),
        np.mean(positives),
        np.mean(negatives),
        len(terms),
    )


def random_cases(count: int, seed: int = 0):
    """Batches of 2-14 items, 1-5 classes (so single-item classes and one-class batches
    both occur), 2-6 dimensions, unit-normalised or not. Continuous random values, so no
    two embeddings coincide (where the loop reference's own gradient would be NaN)."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        size = int(rng.integers(2, 15))
        classes = int(rng.integers(1, 6))
        labels = rng.integers(0, classes, size=size).tolist()
        embeddings = torch.tensor(
            rng.normal(size=(size, int(rng.integers(2, 7)))), dtype=torch.float64
        )
        if rng.random() < 0.5:
            embeddings = embeddings / embeddings.norm(dim=1, keepdim=True)
        yield embeddings, labels


def assert_matches(
    stats: LossStats, expected, embeddings: torch.Tensor, reference_embeddings: torch.Tensor
):
    if expected is None:
        assert stats.num_valid == 0
        assert float(stats.loss.detach()) == 0.0
        assert stats.active_fraction == 0.0
        assert math.isnan(stats.mean_positive_distance) and math.isnan(stats.mean_negative_distance)
        return
    loss, active, mean_pos, mean_neg, valid = expected
    assert float(stats.loss.detach()) == pytest.approx(float(loss.detach()), rel=1e-9, abs=1e-12)
    assert stats.active_fraction == pytest.approx(active)
    assert stats.mean_positive_distance == pytest.approx(mean_pos, rel=1e-9)
    assert stats.mean_negative_distance == pytest.approx(mean_neg, rel=1e-9)
    assert stats.num_valid == valid
    # gradients agree with autograd through the loop reference
    (ours,) = torch.autograd.grad(stats.loss, embeddings)
    (theirs,) = torch.autograd.grad(loss, reference_embeddings)
    assert torch.allclose(ours, theirs, atol=1e-9)


@pytest.mark.parametrize("margin", MARGINS)
@pytest.mark.parametrize(
    ("loss_fn", "reference"),
    [
        (batch_hard_triplet_loss, reference_batch_hard),
        (batch_all_triplet_loss, reference_batch_all),
    ],
    ids=["batch_hard", "batch_all"],
)
def test_loss_matches_loop_reference_on_random_batches(loss_fn, reference, margin):
    degenerate = 0
    for embeddings, labels in random_cases(60, seed=hash(str(margin)) % 1000):
        ours_input = embeddings.clone().requires_grad_(True)
        reference_input = embeddings.clone().requires_grad_(True)
        stats = loss_fn(ours_input, torch.tensor(labels), margin)
        expected = reference(reference_input, labels, margin)
        degenerate += expected is None
        assert_matches(stats, expected, ours_input, reference_input)
    assert 0 < degenerate < 60  # the random cases did include batches with no valid anchor


def test_single_image_classes_are_not_anchors_but_still_negatives():
    # class 0 has two items, classes 1 and 2 one each
    embeddings = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.5], [3.0, 0.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 1, 2])
    stats = batch_hard_triplet_loss(embeddings, labels, margin=0.2)
    assert stats.num_valid == 2
    # anchor 0: d_ap 1, closest negative 0.5 -> 0.7; anchor 1: d_ap 1, closest sqrt(1.25)
    expected = (0.7 + max(0.0, 1.0 - math.sqrt(1.25) + 0.2)) / 2
    assert float(stats.loss.detach()) == pytest.approx(expected, rel=1e-6)
    stats.loss.backward()
    assert embeddings.grad[2].abs().sum() > 0  # the lone item is pushed away as a negative
    assert embeddings.grad[3].abs().sum() == 0  # too far to be anyone's hardest negative


@pytest.mark.parametrize("loss_fn", [batch_hard_triplet_loss, batch_all_triplet_loss])
@pytest.mark.parametrize("margin", MARGINS)
def test_one_class_batch_gives_zero_loss_and_clear_stats(loss_fn, margin):
    embeddings = torch.randn(6, 4, requires_grad=True)
    stats = loss_fn(embeddings, torch.zeros(6, dtype=torch.long), margin)
    assert stats.num_valid == 0 and stats.active_fraction == 0.0
    assert float(stats.loss.detach()) == 0.0 and torch.isfinite(stats.loss)
    stats.loss.backward()  # part of the graph: a training step on it is a no-op
    assert torch.equal(embeddings.grad, torch.zeros_like(embeddings))


@pytest.mark.parametrize("loss_fn", [batch_hard_triplet_loss, batch_all_triplet_loss])
@pytest.mark.parametrize("margin", MARGINS)
def test_identical_embeddings_give_finite_gradients(loss_fn, margin):
    embeddings = torch.ones(8, 5, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    stats = loss_fn(embeddings, labels, margin)
    expected = math.log(2.0) if margin == "soft" else margin  # all distances are 0
    assert float(stats.loss.detach()) == pytest.approx(expected)
    stats.loss.backward()
    assert torch.isfinite(embeddings.grad).all()


def test_pairwise_distances_are_exact_and_differentiable_at_zero():
    embeddings = torch.tensor([[1.0, 2.0], [1.0, 2.0], [4.0, 6.0]], requires_grad=True)
    distances = pairwise_distances(embeddings)
    expected = torch.tensor([[0.0, 0.0, 5.0], [0.0, 0.0, 5.0], [5.0, 5.0, 0.0]])
    assert torch.equal(distances, expected)
    distances.sum().backward()
    assert torch.isfinite(embeddings.grad).all()
    # only the pairs with a non-zero distance pull: d/dx of 2 * 2 * |x - c| terms
    assert torch.allclose(embeddings.grad[2], torch.tensor([2 * 2 * 3 / 5, 2 * 2 * 4 / 5]))


def test_batch_hard_gradient_passes_gradcheck():
    torch.manual_seed(1)
    embeddings = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    for margin in MARGINS:
        assert torch.autograd.gradcheck(
            lambda e, m=margin: batch_hard_triplet_loss(e, labels, m).loss, (embeddings,)
        )


def test_training_on_the_loss_separates_classes():
    torch.manual_seed(0)
    embeddings = torch.randn(12, 4, requires_grad=True)
    labels = torch.arange(3).repeat_interleave(4)
    optimiser = torch.optim.Adam([embeddings], lr=0.05)
    first = None
    for _ in range(150):
        stats = batch_hard_triplet_loss(
            torch.nn.functional.normalize(embeddings, dim=1), labels, 0.2
        )
        first = first if first is not None else stats
        optimiser.zero_grad()
        stats.loss.backward()
        optimiser.step()
    assert stats.active_fraction == 0.0 < first.active_fraction
    assert stats.mean_negative_distance > stats.mean_positive_distance + 0.2


@pytest.mark.parametrize("margin", [0.1, 0.3, "soft"])
def test_agrees_with_pytorch_metric_learning(margin):
    distance = LpDistance(normalize_embeddings=False)
    pml_margin = 0.0 if margin == "soft" else margin  # PML's smooth loss is softplus(gap + margin)
    pml_loss = TripletMarginLoss(
        margin=pml_margin, smooth_loss=margin == "soft", distance=distance, reducer=MeanReducer()
    )
    miner = BatchHardMiner(distance=distance)
    generator = torch.Generator().manual_seed(3)
    for _ in range(10):
        embeddings = torch.nn.functional.normalize(torch.randn(16, 8, generator=generator), dim=1)
        labels = torch.randint(0, 5, (16,), generator=generator)
        ours_hard = batch_hard_triplet_loss(embeddings, labels, margin)
        theirs_hard = pml_loss(embeddings, labels, miner(embeddings, labels))
        assert float(ours_hard.loss.detach()) == pytest.approx(
            float(theirs_hard.detach()), abs=1e-5
        )
        ours_all = batch_all_triplet_loss(embeddings, labels, margin)
        assert float(ours_all.loss.detach()) == pytest.approx(
            float(pml_loss(embeddings, labels).detach()), abs=1e-5
        )


def test_make_loss_follows_the_config():
    embeddings = torch.nn.functional.normalize(
        torch.randn(8, 4, generator=torch.Generator().manual_seed(0)), dim=1
    )
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    cases = [
        (TrainConfig(loss="batch_hard", margin="soft"), batch_hard_triplet_loss, "soft"),
        (TrainConfig(loss="batch_hard", margin=0.15), batch_hard_triplet_loss, 0.15),
        (TrainConfig(loss="batch_all", margin=0.3), batch_all_triplet_loss, 0.3),
    ]
    for config, function, margin in cases:
        assert float(make_loss(config)(embeddings, labels).loss.detach()) == float(
            function(embeddings, labels, margin).loss.detach()
        )


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="labels must be"):
        batch_hard_triplet_loss(torch.zeros(4, 2), torch.zeros(3), 0.1)
    with pytest.raises(ValueError, match="margin"):
        batch_hard_triplet_loss(torch.zeros(4, 2), torch.zeros(4), -0.1)
