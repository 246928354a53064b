"""train.append_features: the pooled backbone features (trained, or the untrained ImageNet
backbone's) follow the embedding in every vector the network gives, never in training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anime_face_id.checkpoint import load_checkpoint, save_checkpoint
from anime_face_id.config import EvaluateConfig, TrainConfig
from anime_face_id.embed import ImageNetFeatures
from anime_face_id.embedding_store import EMBEDDINGS
from anime_face_id.evaluate import EVAL_METRICS, evaluate
from anime_face_id.gallery import GALLERY, rebuild_gallery
from anime_face_id.identify import load_identifier
from anime_face_id.model.efficientnet_lite import FEATURE_DIM
from anime_face_id.model.embedder import Embedder, build_embedder
from anime_face_id.optimisation import make_optimizer
from anime_face_id.train import train
from tests.test_identify import NAMES, params_dict, params_for, write_params
from tests.test_train import make_synthetic_project, tiny_config


def _images(count: int, size: int = 64) -> torch.Tensor:
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(1))


def _reference(model: Embedder, images: torch.Tensor, flip: bool) -> torch.Tensor:
    """Each image on its own, written out: the unit embedding, then the weighted unit pooled
    features (trained backbone or the ImageNet one), the mirror image's vector added, and
    the sum normalised."""
    imagenet = ImageNetFeatures().eval() if model.append_features == "imagenet" else None
    rows = []
    for image in images:
        total = 0
        for view in (image, image.flip(2)) if flip else (image,):
            batch = view[None]
            pooled = model.backbone.feature_maps(batch).mean(dim=(2, 3))
            embedding = F.normalize(model.neck(model.head(pooled)), dim=1)
            features = pooled if imagenet is None else imagenet.backbone.features(batch)
            appended = model.append_weight * F.normalize(features, dim=1)
            total = total + torch.cat([embedding, appended], dim=1)
        rows.append(F.normalize(total, dim=1)[0])
    return torch.stack(rows)


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("source", ["trained", "imagenet"])
def test_vectors_are_the_embedding_then_the_weighted_pooled_features(source, flip):
    torch.manual_seed(0)
    model = Embedder(
        embedding_dim=8,
        neck="batchnorm",
        flip_test=flip,
        append_features=source,
        append_weight=0.7,
    ).eval()
    with torch.no_grad():
        model.backbone._blocks[0]._bn1.weight.mul_(1.5)  # the trained backbone: not ImageNet's
        images = _images(3)
        vectors = model(images)
        assert vectors.shape == (3, 8 + FEATURE_DIM) and model.output_dim == 8 + FEATURE_DIM
        torch.testing.assert_close(vectors, _reference(model, images, flip), atol=1e-5, rtol=1e-4)


def test_the_weight_sets_how_much_of_the_vector_the_appended_part_holds():
    torch.manual_seed(0)
    light = Embedder(embedding_dim=8, append_features="trained", append_weight=0.25).eval()
    heavy = Embedder(embedding_dim=8, append_features="trained", append_weight=4.0).eval()
    heavy.load_state_dict(light.state_dict())
    with torch.no_grad():
        share = [model(_images(2))[:, 8:].norm(dim=1) for model in (light, heavy)]
    # unit parts weighted w: the appended part's length is w / sqrt(1 + w^2)
    torch.testing.assert_close(share[0], torch.full((2,), 0.25 / np.sqrt(1 + 0.25**2)))
    torch.testing.assert_close(share[1], torch.full((2,), 4.0 / np.sqrt(1 + 4.0**2)))


def test_training_never_sees_the_appended_features():
    torch.manual_seed(0)
    plain = Embedder(embedding_dim=8, neck="batchnorm").train()
    appended = Embedder(embedding_dim=8, neck="batchnorm", append_features="imagenet").train()
    appended.load_state_dict(plain.state_dict(), strict=False)
    images = _images(4)
    for got, expected in zip(
        appended.training_outputs(images), plain.training_outputs(images), strict=True
    ):
        torch.testing.assert_close(got, expected)
    assert appended(images).shape == (4, 8)  # training mode: the embedding alone
    config = TrainConfig(embedding_dim=8, append_features="imagenet")
    optimiser = make_optimizer(appended, config)
    trainable = {id(p) for group in optimiser.param_groups for p in group["params"]}
    assert not any(id(p) in trainable for p in appended.imagenet.parameters())


def test_a_checkpoint_keeps_the_frozen_imagenet_backbone(tmp_path):
    torch.manual_seed(0)
    config = TrainConfig(embedding_dim=8, image_size=64, append_features="imagenet")
    model = build_embedder(config).eval()
    save_checkpoint(tmp_path / "e.pt", model, config, ["a", "b"], 1, {})
    # load_checkpoint builds without ImageNet weights: the file must hold them
    loaded = load_checkpoint(tmp_path / "e.pt")
    assert (loaded.embedding_dim, loaded.output_dim) == (8, 8 + FEATURE_DIM)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(_images(2)), model(_images(2)))


def test_unknown_source_is_a_clear_error():
    with pytest.raises(ValueError, match="append_features 'pixels'"):
        Embedder(append_features="pixels", pretrained=False)
    with pytest.raises(ValueError, match="append_features"):
        TrainConfig(append_features="pixels")


@pytest.mark.slow
def test_every_stage_answers_with_the_longer_vectors(tmp_path):
    """Train, evaluate, gallery and identify with the ImageNet features appended."""
    root = tmp_path / "project"
    make_synthetic_project(root, names=NAMES, counts=(6, 3, 3), seed=0)
    data = params_dict(NAMES)
    data["train"].update(append_features="imagenet", append_weight=0.5)
    write_params(root, data)
    train(root, tiny_config(epochs=1, batches_per_epoch=2, append_features="imagenet"))
    evaluate(root, EvaluateConfig(baseline=False, device="cpu"))
    report = json.loads((root / EVAL_METRICS).read_text())
    assert report["checkpoint"]["output_dim"] == 32 + FEATURE_DIM
    with np.load(root / EMBEDDINGS, allow_pickle=False) as store:
        assert store["embeddings"].shape[1] == 32 + FEATURE_DIM
    rebuild_gallery(root, params_for(NAMES), root / "models/embedder.pt", root / GALLERY)
    identifier = load_identifier(root, params_for(NAMES))
    assert identifier.gallery.embeddings.shape[1] == 32 + FEATURE_DIM
    picture = root / "data/faces/akane_red/train_0.png"
    (face,) = identifier.identify_file(picture).faces
    # a gallery picture is its own nearest entry
    assert face.candidates[0].character == "Akane Red"
