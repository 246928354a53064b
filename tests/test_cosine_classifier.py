"""The cosine classifier with a margin (CosFace) against a brute-force reference."""

from __future__ import annotations

import math

import pytest
import torch

from anime_face_id.config import TrainConfig
from anime_face_id.cosine_classifier import CosineClassifier
from anime_face_id.identity_loss import IdentityClassifier, identity_loss, make_classifier


def reference_logits(features, weight, labels, scale, margin):
    """One sample and one class at a time: scale x (cosine - margin on the true class)."""
    rows = []
    for i, feature in enumerate(features.tolist()):
        row = []
        for c, class_weight in enumerate(weight.tolist()):
            dot = sum(a * b for a, b in zip(feature, class_weight, strict=True))
            norms = math.sqrt(sum(a * a for a in feature)) * math.sqrt(
                sum(b * b for b in class_weight)
            )
            cosine = dot / norms
            if labels is not None and c == int(labels[i]):
                cosine -= margin
            row.append(scale * cosine)
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("margin", [0.0, 0.2, 0.5])
@pytest.mark.parametrize("seed", range(4))
def test_logits_match_the_loop_reference_with_and_without_labels(margin, seed):
    generator = torch.Generator().manual_seed(seed)
    batch, classes, dim = 2 + seed * 3, 2 + seed * 2, 3 + seed
    classifier = CosineClassifier(dim, classes, scale=16.0, margin=margin).double()
    with torch.no_grad():
        classifier.weight.copy_(torch.randn(classes, dim, generator=generator, dtype=torch.float64))
    features = torch.randn(batch, dim, generator=generator, dtype=torch.float64) * 5
    labels = torch.randint(0, classes, (batch,), generator=generator)
    weight = classifier.weight.detach()
    for given in (labels, None):
        expected = reference_logits(features, weight, given, 16.0, margin)
        torch.testing.assert_close(classifier(features, given).detach(), expected)


def test_logits_ignore_the_length_of_features_and_lie_within_the_scale():
    classifier = CosineClassifier(8, 4, scale=30.0, margin=0.35)
    features = torch.randn(5, 8)
    torch.testing.assert_close(classifier(features), classifier(features * 7.5))
    assert float(classifier(features).detach().abs().max()) <= 30.0 + 1e-4


def test_the_margin_makes_a_correct_but_narrow_lead_still_cost_loss():
    # two classes 0.2 apart in cosine: the plain cosine head is content, the margin is not
    classifier = CosineClassifier(2, 2, scale=30.0, margin=0.35)
    with torch.no_grad():
        classifier.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    angle = math.pi / 4 - 0.15
    features = torch.tensor([[math.cos(angle), math.sin(angle)]])
    labels = torch.tensor([0])
    plain = CosineClassifier(2, 2, scale=30.0, margin=0.0)
    plain.load_state_dict(classifier.state_dict())
    assert float(identity_loss(plain(features, labels), labels, 0.0)) < 0.02
    assert float(identity_loss(classifier(features, labels), labels, 0.0)) > 1.0


def test_it_learns_to_name_separable_features():
    torch.manual_seed(0)
    centres = torch.randn(5, 16) * 3
    labels = torch.arange(5).repeat(8)
    features = centres[labels] + torch.randn(40, 16) * 0.3
    classifier = CosineClassifier(16, 5, scale=16.0, margin=0.3)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=0.05)
    for _ in range(100):
        optimizer.zero_grad()
        identity_loss(classifier(features, labels), labels, 0.1).backward()
        optimizer.step()
    assert (classifier(features).argmax(1) == labels).float().mean() == 1.0


def test_train_id_head_chooses_the_classifier_and_bad_settings_are_refused():
    linear = make_classifier(TrainConfig(), 8, 3)
    cosine = make_classifier(TrainConfig(id_head="cosine", id_scale=20, id_margin=0.1), 8, 3)
    assert isinstance(linear, IdentityClassifier)
    assert isinstance(cosine, CosineClassifier) and (cosine.scale, cosine.margin) == (20, 0.1)
    with pytest.raises(ValueError, match="margin"):
        CosineClassifier(8, 3, scale=30.0, margin=1.0)
    with pytest.raises(ValueError):
        TrainConfig(id_head="arcface")
