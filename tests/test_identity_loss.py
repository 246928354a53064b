"""The identity loss and the BNNeck against brute-force references, and flip-test
embeddings: what they compute and what they promise."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anime_face_id.identity_loss import IdentityClassifier, identity_loss
from anime_face_id.model import Embedder


def reference_identity_loss(logits: torch.Tensor, labels: torch.Tensor, smoothing: float):
    """The textbook definition, one sample and one class at a time."""
    batch, classes = logits.shape
    total = 0.0
    for i in range(batch):
        row = [float(v) for v in logits[i]]
        top = max(row)
        log_norm = top + math.log(sum(math.exp(v - top) for v in row))
        for c in range(classes):
            target = (1.0 - smoothing) * (c == int(labels[i])) + smoothing / classes
            total -= target * (row[c] - log_norm)
    return total / batch


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("seed", range(5))
def test_identity_loss_matches_the_loop_reference(smoothing, seed):
    generator = torch.Generator().manual_seed(seed)
    batch, classes = 3 + seed * 5, 2 + seed * 3
    logits = torch.randn(batch, classes, generator=generator, dtype=torch.float64) * 4
    labels = torch.randint(0, classes, (batch,), generator=generator)
    expected = reference_identity_loss(logits, labels, smoothing)
    assert float(identity_loss(logits, labels, smoothing)) == pytest.approx(expected, rel=1e-9)


def test_smoothing_keeps_the_loss_from_rewarding_overconfidence():
    # without smoothing, ever larger logits on the right class drive the loss to 0;
    # with it, the loss has a finite best scale and grows again beyond it
    labels = torch.tensor([0, 1])
    direction = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    plain = [float(identity_loss(direction * s, labels, 0.0)) for s in (0.5, 1.1, 50)]
    smoothed = [float(identity_loss(direction * s, labels, 0.2)) for s in (0.5, 1.1, 50)]
    assert plain[0] > plain[1] > plain[2] and plain[2] < 1e-6
    assert smoothed[1] < smoothed[0] and smoothed[2] > smoothed[1]


def test_identity_loss_refuses_bad_shapes_and_smoothing():
    with pytest.raises(ValueError, match="logits must be"):
        identity_loss(torch.zeros(4), torch.zeros(4, dtype=torch.long), 0.1)
    with pytest.raises(ValueError, match="logits must be"):
        identity_loss(torch.zeros(4, 3), torch.zeros(5, dtype=torch.long), 0.1)
    with pytest.raises(ValueError, match="smoothing"):
        identity_loss(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), 1.0)


def test_classifier_has_no_bias_and_learns_to_name_separable_features():
    torch.manual_seed(0)
    centres = torch.randn(5, 16) * 3
    labels = torch.arange(5).repeat(8)
    features = centres[labels] + torch.randn(40, 16) * 0.3
    classifier = IdentityClassifier(16, 5)
    assert [name for name, _ in classifier.named_parameters()] == ["linear.weight"]
    optimizer = torch.optim.Adam(classifier.parameters(), lr=0.05)
    for _ in range(100):
        optimizer.zero_grad()
        identity_loss(classifier(features), labels, 0.1).backward()
        optimizer.step()
    assert (classifier(features).argmax(1) == labels).float().mean() == 1.0


def _images(count: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_batchnorm_neck_matches_a_brute_force_reference():
    torch.manual_seed(0)
    model = Embedder(embedding_dim=8, neck="batchnorm")
    images = _images(6)
    # the neck learns a scale, not a shift: its bias is frozen at 0
    assert not model.neck.bias.requires_grad and float(model.neck.bias.abs().sum()) == 0
    model.train()
    model.backbone.eval()  # its stochastic depth would make two projections differ
    unit, neck = model.training_outputs(images)
    projection = model.project(images).detach()  # dropout is 0: the same projection
    mean = projection.mean(0)
    var = projection.var(0, unbiased=False)
    expected = (projection - mean) / torch.sqrt(var + model.neck.eps) * model.neck.weight
    torch.testing.assert_close(neck.detach(), expected, atol=1e-4, rtol=1e-4)
    # the triplet loss sees the projection itself, at unit length
    torch.testing.assert_close(unit.detach(), F.normalize(projection, dim=1))
    # in eval mode the embedding is the normalised neck output, with running statistics
    model.eval()
    with torch.no_grad():
        stats = model.neck
        eval_neck = (projection - stats.running_mean) / torch.sqrt(stats.running_var + stats.eps)
        expected = F.normalize(eval_neck * stats.weight, dim=1)
        torch.testing.assert_close(model(images), expected, atol=1e-4, rtol=1e-4)


def test_without_a_neck_the_embedding_is_the_normalised_projection():
    torch.manual_seed(0)
    model = Embedder(embedding_dim=8).eval()
    images = _images(3)
    with torch.no_grad():
        unit, neck = model.training_outputs(images)
        torch.testing.assert_close(model(images), unit)
        torch.testing.assert_close(neck, model.project(images))


@pytest.mark.parametrize("neck", ["none", "batchnorm"])
def test_flip_test_embeddings_do_not_change_under_a_mirror_image(neck):
    torch.manual_seed(0)
    # ImageNet weights: a random backbone maps every image to nearly the same point
    plain = Embedder(embedding_dim=8, neck=neck).eval()
    flipped = Embedder(embedding_dim=8, neck=neck, flip_test=True).eval()
    flipped.load_state_dict(plain.state_dict())
    images = _images(4)
    with torch.no_grad():
        a, b = flipped(images), flipped(images.flip(3))
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        assert np.allclose(a.norm(dim=1).numpy(), 1.0, atol=1e-5)
        # the plain network is not mirror-invariant, so the test above can fail
        assert (plain(images) - plain(images.flip(3))).abs().max() > 1e-3
        # and flip-test is the mean of the two plain embeddings, renormalised
        expected = F.normalize(plain(images) + plain(images.flip(3)), dim=1)
        torch.testing.assert_close(a, expected, atol=1e-5, rtol=1e-5)
    # training sees single images: flip-test is an inference-time average only
    flipped.train()
    flipped.backbone.eval()
    unit, _ = flipped.training_outputs(images)
    assert not torch.allclose(unit, flipped.training_outputs(images.flip(3))[0], atol=1e-3)


def test_unknown_neck_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown neck 'layernorm'"):
        Embedder(pretrained=False, neck="layernorm")
