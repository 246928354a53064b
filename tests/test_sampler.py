"""P x K batches: shape, at least two distinct images per class, exclusion of classes
that cannot give a positive, determinism per (seed, epoch) and coverage."""

from __future__ import annotations

import logging
from collections import Counter

import pytest
from torch.utils.data import DataLoader, Dataset

from anime_face_id.sampler import PKSampler


def imbalanced_labels() -> list[str]:
    """'a' 10 items, 'b' 5, 'c' 3 (fewer than K=4), 'd' 2, 'e' 1 (unusable), 'f' 7."""
    counts = {"a": 10, "b": 5, "c": 3, "d": 2, "e": 1, "f": 7}
    return [label for label, count in counts.items() for _ in range(count)]


def check_batch(
    batch: list[int], labels: list, p: int, k: int, image_ids: list | None = None
) -> None:
    """P classes x K rows; each class shows min(K, its distinct images) distinct images."""
    image_ids = image_ids or list(range(len(labels)))
    per_class = Counter(labels[i] for i in batch)
    assert len(batch) == p * k
    assert len(per_class) == p and set(per_class.values()) == {k}
    for label in per_class:
        shown = {image_ids[i] for i in batch if labels[i] == label}
        available = {image for image, x in zip(image_ids, labels, strict=True) if x == label}
        assert len(shown) >= 2, f"class {label} has a single image in {batch}"
        assert len(shown) == min(k, len(available))


def test_batches_have_p_classes_of_k_items_with_distinct_images():
    labels = imbalanced_labels()
    sampler = PKSampler(labels, p=3, k=4, seed=0, batches_per_epoch=200)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 200
    for batch in batches:
        check_batch(batch, labels, 3, 4)
        assert "e" not in {labels[i] for i in batch}
    # classes with fewer than K images are padded with repeats: every image of 'c' appears
    for batch in batches:
        c_items = [i for i in batch if labels[i] == "c"]
        if c_items:
            assert set(c_items) == {i for i, x in enumerate(labels) if x == "c"}


def test_single_image_classes_are_excluded_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="anime_face_id.sampler"):
        sampler = PKSampler(imbalanced_labels(), p=2, k=2, seed=0)
    assert sampler.excluded_classes == ["e"]
    assert any("single distinct image" in w and "e" in w for w in sampler.warnings)
    assert "single distinct image" in caplog.text


def test_repeated_rows_of_one_image_do_not_count_as_two_images():
    # the balanced index repeats rows: 'x' is one picture listed 4 times, 'y' has 2
    # pictures listed 3 times each, 'z' 4 distinct pictures
    labels = ["x"] * 4 + ["y"] * 6 + ["z"] * 4
    image_ids = ["x0"] * 4 + ["y0", "y1"] * 3 + ["z0", "z1", "z2", "z3"]
    sampler = PKSampler(labels, p=2, k=4, seed=1, batches_per_epoch=50, image_ids=image_ids)
    assert sampler.excluded_classes == ["x"]
    for batch in sampler:
        check_batch(batch, labels, 2, 4, image_ids)
        y_images = Counter(image_ids[i] for i in batch if labels[i] == "y")
        assert set(y_images) == {"y0", "y1"}


def test_p_is_reduced_clearly_when_too_few_classes():
    labels = ["a"] * 4 + ["b"] * 4 + ["c"] * 4
    sampler = PKSampler(labels, p=8, k=2, seed=0)
    assert sampler.p == 3
    assert any("p reduced from 8 to 3" in w for w in sampler.warnings)
    for batch in sampler:
        check_batch(batch, labels, 3, 2)


def test_fewer_than_two_usable_classes_is_an_error():
    with pytest.raises(ValueError, match="at least 2 classes"):
        PKSampler(["a"] * 5 + ["b"], p=2, k=2, seed=0)
    with pytest.raises(ValueError, match="k must be at least 2"):
        PKSampler(["a", "a", "b", "b"], p=2, k=1, seed=0)


def test_same_seed_and_epoch_repeat_and_others_differ():
    labels = imbalanced_labels()

    def run(seed: int, epoch: int) -> list[list[int]]:
        sampler = PKSampler(labels, p=3, k=4, seed=seed, batches_per_epoch=20)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert run(0, 0) == run(0, 0)
    assert run(0, 3) == run(0, 3)
    assert run(0, 0) != run(0, 1)
    assert run(0, 0) != run(1, 0)
    # iterating twice without set_epoch repeats the epoch (as DistributedSampler does)
    sampler = PKSampler(labels, p=3, k=4, seed=0, batches_per_epoch=20)
    assert list(sampler) == list(sampler)


def test_default_epoch_covers_every_class_and_balances_visits():
    labels = [f"class{c}" for c in range(23) for _ in range(5)]
    sampler = PKSampler(labels, p=4, k=2, seed=0)
    # 23 classes: ceil(23 / 4) = 6 batches would cover them; 115 images // 8 = 14 batches
    assert len(sampler) == 14
    for epoch in range(5):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert {labels[i] for batch in batches[:6] for i in batch} == set(labels)
        visits = Counter(labels[i] for batch in batches for i in batch[::2])
        assert max(visits.values()) - min(visits.values()) <= 2  # shuffled passes, not luck


def test_works_as_a_dataloader_batch_sampler():
    class Indices(Dataset):
        def __len__(self) -> int:
            return 20

        def __getitem__(self, index: int) -> int:
            return index

    labels = [i % 5 for i in range(20)]
    sampler = PKSampler(labels, p=2, k=3, seed=0, batches_per_epoch=4)
    batches = [batch.tolist() for batch in DataLoader(Indices(), batch_sampler=sampler)]
    assert batches == list(sampler)
