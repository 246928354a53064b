"""Retrieval metrics against explicit per-query loops and pytorch-metric-learning's
AccuracyCalculator; EER against a brute-force threshold sweep."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from pytorch_metric_learning.distances import CosineSimilarity
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import CustomKNN

from anime_face_id.metrics import (
    confused_pairs,
    per_class_table,
    retrieval_metrics,
    verification_eer,
)


def clustered(
    rng: np.random.Generator,
    classes: int,
    per_class: list[int] | int,
    dim: int = 8,
    spread: float = 0.8,
):
    """Noisy clusters around random centres: neighbours are right often, not always."""
    counts = per_class if isinstance(per_class, list) else [per_class] * classes
    centres = rng.normal(size=(classes, dim))
    labels = np.repeat(np.arange(classes), counts)
    embeddings = centres[labels] + spread * rng.normal(size=(len(labels), dim))
    return embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True), labels


def brute_force(queries, q_labels, refs, r_labels, same_set: bool, ks=(1, 5, 10)):
    """Per included query: explicit distance loop, sort, and the textbook definitions."""
    rows = []
    for qi in range(len(queries)):
        candidates = []
        for ri in range(len(refs)):
            if same_set and ri == qi:
                continue
            distance = math.sqrt(
                sum((queries[qi][d] - refs[ri][d]) ** 2 for d in range(len(queries[qi])))
            )
            candidates.append((distance, ri))
        candidates.sort()
        hits = [r_labels[ri] == q_labels[qi] for _, ri in candidates]
        r = sum(hits)
        if r == 0:
            continue
        precision_sum, found = 0.0, 0
        for rank in range(1, r + 1):
            if hits[rank - 1]:
                found += 1
                precision_sum += found / rank
        row = {
            "label": q_labels[qi],
            "precision_at_1": float(hits[0]),
            "r_precision": sum(hits[:r]) / r,
            "map_at_r": precision_sum / r,
            "precision_at_5": sum(hits[:5]) / min(5, len(hits)),
        }
        for k in ks:
            row[f"top_{k}"] = float(any(hits[:k]))
        rows.append(row)
    return rows


def mean_of(rows, key):
    return sum(row[key] for row in rows) / len(rows)


@pytest.mark.parametrize("seed", range(6))
def test_same_set_metrics_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    # uneven classes, including one with a single item (excluded from every metric)
    counts = [int(c) for c in rng.integers(2, 9, size=6)] + [1]
    embeddings, labels = clustered(rng, 7, counts, spread=0.6 + 0.2 * seed)
    result = retrieval_metrics(embeddings, labels)
    rows = brute_force(embeddings, labels, embeddings, labels, same_set=True)
    assert result["num_queries"] == len(rows) == sum(counts) - 1
    assert result["num_excluded_queries"] == 1
    for key in ("precision_at_1", "r_precision", "map_at_r", "precision_at_5"):
        assert result[key] == pytest.approx(mean_of(rows, key)), key
    for k in (1, 5, 10):
        assert result["top_k_accuracy"][k] == pytest.approx(mean_of(rows, f"top_{k}"))
    per_class = result["per_class"]
    assert list(per_class["label"]) == list(range(6))  # the single-item class has no row
    for index, label in enumerate(per_class["label"]):
        own = [row for row in rows if row["label"] == label]
        assert per_class["queries"][index] == len(own)
        assert per_class["map_at_r"][index] == pytest.approx(mean_of(own, "map_at_r"))
        assert per_class["top_5_accuracy"][index] == pytest.approx(mean_of(own, "top_5"))


@pytest.mark.parametrize("seed", range(4))
def test_query_vs_reference_metrics_match_brute_force(seed):
    rng = np.random.default_rng(100 + seed)
    embeddings, labels = clustered(rng, 5, 12, spread=0.9)
    query_mask = rng.random(len(labels)) < 0.4
    queries, q_labels = embeddings[query_mask], labels[query_mask]
    refs, r_labels = embeddings[~query_mask], labels[~query_mask]
    # a query class absent from the references is excluded
    q_labels = q_labels.copy()
    q_labels[0] = 99
    result = retrieval_metrics(queries, q_labels, refs, r_labels, ks=(1, 3))
    rows = brute_force(queries, q_labels, refs, r_labels, same_set=False, ks=(1, 3))
    assert result["num_excluded_queries"] == 1 and result["num_queries"] == len(rows)
    for key in ("precision_at_1", "r_precision", "map_at_r", "precision_at_5"):
        assert result[key] == pytest.approx(mean_of(rows, key)), key
    assert set(result["top_k_accuracy"]) == {1, 3}
    assert result["top_k_accuracy"][3] == pytest.approx(mean_of(rows, "top_3"))


@pytest.mark.parametrize("seed", range(3))
def test_agrees_with_pytorch_metric_learning_accuracy_calculator(seed):
    rng = np.random.default_rng(200 + seed)
    embeddings, labels = clustered(rng, 6, [5, 9, 3, 12, 7, 1], spread=1.0)
    # faiss is not installed: PML's exact torch k-NN on cosine similarity instead
    calculator = AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
        k="max_bin_count",
        knn_func=CustomKNN(CosineSimilarity()),
    )
    tensor = torch.tensor(embeddings, dtype=torch.float32)
    theirs = calculator.get_accuracy(
        tensor, torch.tensor(labels)
    )  # reference = query set, self excluded
    ours = retrieval_metrics(embeddings, labels)
    assert ours["precision_at_1"] == pytest.approx(theirs["precision_at_1"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(theirs["r_precision"], abs=1e-6)
    assert ours["map_at_r"] == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-6)
    # and with a separate reference set
    split = len(labels) // 2
    order = rng.permutation(len(labels))
    q, r = order[:split], order[split:]
    theirs = calculator.get_accuracy(
        tensor[q], torch.tensor(labels[q]), tensor[r], torch.tensor(labels[r])
    )
    ours = retrieval_metrics(embeddings[q], labels[q], embeddings[r], labels[r])
    assert ours["precision_at_1"] == pytest.approx(theirs["precision_at_1"], abs=1e-6)
    assert ours["map_at_r"] == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-6)


def test_perfect_and_hopeless_embeddings():
    labels = np.repeat(np.arange(4), 5)
    perfect = np.eye(4)[labels] + 1e-3 * np.random.default_rng(0).normal(size=(20, 4))
    result = retrieval_metrics(perfect, labels)
    assert (
        result["precision_at_1"]
        == result["map_at_r"]
        == result["r_precision"]
        == pytest.approx(1.0)
    )
    assert result["precision_at_5"] == pytest.approx(4 / 5)  # only 4 others share the label
    # every item's nearest neighbours are of another class
    hopeless = np.eye(4)[(labels + np.arange(20)) % 4] + 1e-3 * np.random.default_rng(1).normal(
        size=(20, 4)
    )
    worse = retrieval_metrics(hopeless, labels)
    assert worse["precision_at_1"] < 0.5 and worse["map_at_r"] < result["map_at_r"]


def test_accepts_torch_tensors_and_string_labels():
    rng = np.random.default_rng(5)
    embeddings, labels = clustered(rng, 3, 6)
    names = np.array(["Kuroko Tetsuya", "Kise Ryota", "Aomine Daiki"])[labels]
    from_numpy = retrieval_metrics(embeddings, names)
    from_torch = retrieval_metrics(torch.tensor(embeddings), list(names))
    assert from_numpy["map_at_r"] == pytest.approx(from_torch["map_at_r"])
    assert set(from_numpy["per_class"]["label"]) == set(names)


def test_per_class_table_rows():
    rng = np.random.default_rng(8)
    embeddings, labels = clustered(rng, 4, 6, spread=1.2)
    result = retrieval_metrics(embeddings, labels)
    table = per_class_table(result)
    assert len(table) == 4
    assert {row["label"] for row in table} == {0, 1, 2, 3}
    assert [row["map_at_r"] for row in table] == sorted(row["map_at_r"] for row in table)
    for row in table:
        assert row["queries"] == 6
        assert {"precision_at_1", "r_precision", "precision_at_5", "top_1_accuracy"} <= set(row)
    assert np.mean([row["precision_at_1"] for row in table]) == pytest.approx(
        result["precision_at_1"]
    )


def test_confused_pairs_counts_nearest_neighbour_mistakes():
    rng = np.random.default_rng(9)
    embeddings, labels = clustered(rng, 5, 8, spread=1.1)
    pairs = confused_pairs(embeddings, labels, top=100)
    expected: Counter = Counter()
    for i in range(len(labels)):
        others = [j for j in range(len(labels)) if j != i]
        nearest = min(others, key=lambda j: np.linalg.norm(embeddings[i] - embeddings[j]))
        if labels[nearest] != labels[i]:
            expected[tuple(sorted((labels[i], labels[nearest])))] += 1
    assert {(a, b): count for a, b, count in pairs} == expected
    assert [count for _, _, count in pairs] == sorted(
        (count for _, _, count in pairs), reverse=True
    )
    assert len(confused_pairs(embeddings, labels, top=2)) == min(2, len(expected))
    assert sum(count for _, _, count in pairs) == round(
        len(labels) * (1 - retrieval_metrics(embeddings, labels)["precision_at_1"])
    )


def brute_force_eer(embeddings, labels):
    """Every observed similarity as threshold; FAR/FRR counted pair by pair. The rates
    hold from just above the next lower similarity up to the chosen one: the threshold
    reported is the middle of that interval."""
    pairs = [(i, j) for i in range(len(labels)) for j in range(i + 1, len(labels))]
    similarity = {pair: float(np.dot(embeddings[pair[0]], embeddings[pair[1]])) for pair in pairs}
    genuine = [similarity[p] for p in pairs if labels[p[0]] == labels[p[1]]]
    impostor = [similarity[p] for p in pairs if labels[p[0]] != labels[p[1]]]
    best, below = None, None
    for threshold in sorted(set(similarity.values())):
        far = sum(s >= threshold for s in impostor) / len(impostor)
        frr = sum(s < threshold for s in genuine) / len(genuine)
        if best is None or abs(far - frr) < best[0]:
            middle = threshold if below is None else (below + threshold) / 2
            best = (abs(far - frr), (far + frr) / 2, middle)
        below = threshold
    return best[1], best[2]


@pytest.mark.parametrize("seed", range(4))
def test_eer_matches_a_brute_force_threshold_sweep(seed):
    rng = np.random.default_rng(300 + seed)
    embeddings, labels = clustered(rng, 4, [3, 6, 5, 8], spread=0.7 + 0.3 * seed)
    eer, threshold = verification_eer(embeddings, labels)
    expected_eer, expected_threshold = brute_force_eer(embeddings, labels)
    assert eer == pytest.approx(expected_eer)
    assert threshold == pytest.approx(expected_threshold)
    assert 0.0 <= eer <= 0.5


def test_eer_of_separable_and_degenerate_sets():
    labels = np.repeat(np.arange(3), 4)
    separable = np.eye(3)[labels] + 1e-3 * np.random.default_rng(0).normal(size=(12, 3))
    eer, threshold = verification_eer(separable, labels)
    assert eer == 0.0 and 0.0 < threshold <= 1.0
    assert all(
        math.isnan(value) for value in verification_eer(separable[:3], [0, 1, 2])
    )  # no genuine pair
    assert all(
        math.isnan(value) for value in verification_eer(separable[:4], [0, 0, 0, 0])
    )  # no impostor


def test_eer_in_row_chunks_and_in_bins_agrees_with_the_exact_sweep(monkeypatch):
    """Past EXACT_PAIRS the pair scores are binned instead of kept: the EER and its
    threshold stay within a bin's width of the exact sweep's; chunks of rows change
    nothing."""
    import anime_face_id.verification as verification

    rng = np.random.default_rng(21)
    embeddings, labels = clustered(rng, 5, [9, 14, 6, 11, 10], spread=1.1)
    exact = verification_eer(embeddings, labels)
    expected = brute_force_eer(embeddings, labels)
    assert exact == pytest.approx(expected)
    monkeypatch.setattr(verification, "ROW_CHUNK", 7)
    assert verification_eer(embeddings, labels) == pytest.approx(exact)
    monkeypatch.setattr(verification, "EXACT_PAIRS", 10)
    binned_eer, binned_threshold = verification_eer(embeddings, labels)
    width = 2.0 / verification.SCORE_BINS
    assert binned_threshold == pytest.approx(exact[1], abs=width)
    pairs = len(labels) * (len(labels) - 1) // 2
    assert binned_eer == pytest.approx(exact[0], abs=2 / pairs + 1e-9)  # one pair either side
    same = np.repeat([0, 1], 3)
    assert all(math.isnan(v) for v in verification_eer(np.eye(2)[same], np.zeros(6)))


def test_chunked_ranking_gives_the_same_results(monkeypatch):
    import anime_face_id.metrics as metrics_module

    rng = np.random.default_rng(12)
    embeddings, labels = clustered(rng, 4, [5, 7, 1, 6], spread=1.0)
    whole = retrieval_metrics(embeddings, labels)
    whole_pairs = confused_pairs(embeddings, labels)
    monkeypatch.setattr(metrics_module, "QUERY_CHUNK", 4)  # 19 queries in 5 chunks
    chunked = retrieval_metrics(embeddings, labels)
    for key in ("precision_at_1", "r_precision", "map_at_r", "precision_at_5"):
        assert chunked[key] == pytest.approx(whole[key])
    assert confused_pairs(embeddings, labels) == whole_pairs
