"""Table rows to tensors: stable labels, the augment flag, reproducible augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from anime_face_id.dataset import (
    Draw,
    FaceDataset,
    NumberedBatches,
    class_names_of,
    examples_from_rows,
    require_paths_inside,
    unreadable_images,
)
from anime_face_id.errors import StageError
from anime_face_id.imaging import load_rgb
from anime_face_id.sampler import PKSampler
from anime_face_id.transforms import augment, preprocess

SIZE = 40


def write_image(root: Path, relative: str, seed: int) -> str:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    pixels[10:30, 12:36] = rng.integers(0, 256, 3)  # a block, so flips and tilts show
    (root / relative).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(root / relative)
    return relative


@pytest.fixture
def rows(tmp_path) -> list[dict[str, str]]:
    """Two characters listed out of order; one row repeated with augment=1 (as balance
    writes an oversampled copy)."""
    table = []
    for index, name in enumerate(["Zoe", "Adam", "Zoe", "Adam", "Mia", "Mia"]):
        path = write_image(tmp_path, f"data/faces/{name.lower()}/{index}.png", index)
        table.append({"character": name, "slug": name.lower(), "path": path, "augment": "0"})
    table.append({**table[0], "augment": "1"})
    return table


def test_labels_follow_sorted_names_whatever_the_row_order(rows):
    names = class_names_of(rows)
    assert names == ["Adam", "Mia", "Zoe"]
    assert class_names_of(list(reversed(rows))) == names
    examples = examples_from_rows(rows, names)
    assert [e.label for e in examples] == [2, 0, 2, 0, 1, 1, 2]
    assert [e.augment for e in examples] == [False] * 6 + [True]
    assert examples_from_rows(rows, ["Adam", "Zoe"])[-1].label == 1  # Mia left out
    assert len(examples_from_rows(rows, ["Adam", "Zoe"])) == 5


def test_plain_indices_give_the_preprocessed_image_and_its_label(rows, tmp_path):
    names = class_names_of(rows)
    dataset = FaceDataset(tmp_path, examples_from_rows(rows, names), SIZE, augment_all=True)
    assert len(dataset) == 7
    tensor, label = dataset[1]
    assert label == 0 and tensor.shape == (3, SIZE, SIZE) and tensor.dtype == torch.float32
    expected = preprocess(load_rgb(tmp_path / rows[1]["path"]), SIZE)
    assert torch.equal(tensor, expected)
    # an int index is evaluation: never augmented, even with augment_all
    assert torch.equal(dataset[6][0], preprocess(load_rgb(tmp_path / rows[0]["path"]), SIZE))


def test_the_augment_flag_is_honoured_row_by_row(rows, tmp_path):
    examples = examples_from_rows(rows, class_names_of(rows))
    dataset = FaceDataset(tmp_path, examples, SIZE, seed=5, augment_all=False)
    plain = preprocess(load_rgb(tmp_path / rows[0]["path"]), SIZE)

    not_flagged, _ = dataset[Draw(row=0, epoch=1, step=0, position=0)]
    assert torch.equal(not_flagged, plain)

    flagged, label = dataset[Draw(row=6, epoch=1, step=0, position=3)]
    assert label == 2
    assert not torch.equal(flagged, plain)
    rng = np.random.default_rng([5, 1, 0, 3, 6])
    assert torch.equal(flagged, augment(load_rgb(tmp_path / rows[0]["path"]), rng, SIZE))

    everything = FaceDataset(tmp_path, examples, SIZE, seed=5, augment_all=True)
    assert not torch.equal(everything[Draw(0, 1, 0, 0)][0], plain)


def test_augmentation_depends_only_on_the_draw(rows, tmp_path):
    dataset = FaceDataset(tmp_path, examples_from_rows(rows, class_names_of(rows)), SIZE, 1, True)
    same = [dataset[Draw(2, 3, 4, 5)][0] for _ in range(2)]
    assert torch.equal(same[0], same[1])
    assert not torch.equal(same[0], dataset[Draw(2, 4, 4, 5)][0])  # next epoch
    assert not torch.equal(same[0], dataset[Draw(2, 3, 4, 6)][0])  # another place in a batch
    other_seed = FaceDataset(tmp_path, dataset.examples, SIZE, 2, True)
    assert not torch.equal(same[0], other_seed[Draw(2, 3, 4, 5)][0])


def test_numbered_batches_carry_epoch_step_and_position(rows):
    examples = examples_from_rows(rows, class_names_of(rows))
    sampler = PKSampler([e.label for e in examples], p=2, k=2, seed=0, batches_per_epoch=3)
    batches = NumberedBatches(sampler)
    batches.set_epoch(4)
    assert sampler.epoch == 4 and len(batches) == 3
    numbered = list(batches)
    plain = list(sampler)
    assert [[draw.row for draw in batch] for batch in numbered] == plain
    for step, batch in enumerate(numbered):
        assert [(d.epoch, d.step, d.position) for d in batch] == [(4, step, i) for i in range(4)]


def test_worker_processes_load_exactly_what_the_main_process_loads(rows, tmp_path):
    examples = examples_from_rows(rows, class_names_of(rows))
    dataset = FaceDataset(tmp_path, examples, SIZE, seed=0, augment_all=True)

    def epoch(workers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        sampler = PKSampler([e.label for e in examples], 2, 2, seed=0, batches_per_epoch=3)
        batches = NumberedBatches(sampler, epoch=1)
        return list(DataLoader(dataset, batch_sampler=batches, num_workers=workers))

    for (a_images, a_labels), (b_images, b_labels) in zip(epoch(0), epoch(2), strict=True):
        assert torch.equal(a_images, b_images) and torch.equal(a_labels, b_labels)


def test_unreadable_images_are_found_with_their_reason(rows, tmp_path):
    (tmp_path / rows[1]["path"]).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (tmp_path / rows[2]["path"]).unlink()
    problems = unreadable_images(tmp_path, [row["path"] for row in rows])
    assert set(problems) == {rows[1]["path"], rows[2]["path"]}
    assert problems[rows[2]["path"]] == "cannot read: file not found"
    assert problems[rows[1]["path"]].startswith(("not an image", "corrupt", "truncated"))


@pytest.mark.parametrize("path", ["../elsewhere.png", "/etc/passwd", "data/../../x.png"])
def test_paths_leaving_the_project_are_refused(path, tmp_path):
    with pytest.raises(StageError, match="outside the project"):
        require_paths_inside([{"path": path}], "data/balanced/train.csv", tmp_path)
    require_paths_inside([{"path": "data/faces/a/b.png"}], "data/balanced/train.csv", tmp_path)


def test_paths_through_a_link_out_of_the_project_or_outside_data_are_refused(
    tmp_path, tmp_path_factory
):
    (tmp_path / "data/faces/a").mkdir(parents=True)
    (tmp_path / "data/faces/a/out.png").symlink_to(tmp_path_factory.mktemp("away") / "x.png")
    with pytest.raises(StageError, match="through a symbolic link"):
        require_paths_inside([{"path": "data/faces/a/out.png"}], "gallery tables", tmp_path)
    with pytest.raises(StageError, match="not under data/"):
        require_paths_inside([{"path": "models/embedder.pt"}], "gallery tables", tmp_path)
