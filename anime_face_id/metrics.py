"""Retrieval and verification metrics for an embedding model.

Definitions follow Musgrave, Belongie & Lim 2020, "A Metric Learning Reality Check":
precision@1, R-precision and MAP@R, where R is the number of references sharing the
query's label. Top-k accuracy (any of the k nearest has the right label) and precision@5
(mean fraction of the 5 nearest that match; of all references when there are fewer) are
the figures the original blog reported.

Conventions:
- Embeddings are L2-normalised here and ranked by cosine similarity (equivalent to
  euclidean ranking on unit vectors); ties are broken by reference order, so results are
  deterministic.
- Without a reference set, every item queries all OTHER items of the same set.
- A query whose label has no reference item (other than itself) cannot be answered
  correctly: it is excluded from every retrieval metric, as pytorch-metric-learning's
  AccuracyCalculator does, and counted in ``num_excluded_queries``. Its nearest
  neighbour still counts in ``confused_pairs``.
- Per-class values are means over that class's (included) queries.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterator, Sequence

import numpy as np
import torch

from anime_face_id.search_index import unit_rows
from anime_face_id.verification import pairwise_eer

ArrayLike = np.ndarray | torch.Tensor | Sequence
QUERY_CHUNK = 1024  # queries ranked at once: bounds memory at CHUNK x references


def as_unit_array(embeddings: ArrayLike) -> np.ndarray:
    if isinstance(embeddings, torch.Tensor):
        embeddings = embeddings.detach().cpu().numpy()
    return unit_rows(embeddings, dtype=np.float64)


def as_label_array(labels: ArrayLike, count: int) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    array = np.asarray(labels)
    if array.shape != (count,):
        raise ValueError(f"expected {count} labels, got shape {array.shape}")
    return array


def _queries_and_references(
    query_emb: ArrayLike,
    query_labels: ArrayLike,
    ref_emb: ArrayLike | None,
    ref_labels: ArrayLike | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    queries = as_unit_array(query_emb)
    q_labels = as_label_array(query_labels, len(queries))
    if ref_emb is None:
        return queries, q_labels, queries, q_labels
    if ref_labels is None:
        raise ValueError("ref_labels are required with ref_emb")
    refs = as_unit_array(ref_emb)
    if refs.shape[1] != queries.shape[1]:
        raise ValueError(
            f"query and reference embeddings differ in size: {queries.shape[1]} vs {refs.shape[1]}"
        )
    return queries, q_labels, refs, as_label_array(ref_labels, len(refs))


def _ranked_matches(
    queries: np.ndarray,
    query_labels: np.ndarray,
    refs: np.ndarray,
    ref_labels: np.ndarray,
    exclude_self: bool,
) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    """Per chunk of queries: (slice, reference indices by rank, does each match the label).

    With ``exclude_self`` the query's own row is ranked last and dropped."""
    for start in range(0, len(queries), QUERY_CHUNK):
        rows = slice(start, min(start + QUERY_CHUNK, len(queries)))
        similarity = queries[rows] @ refs.T
        if exclude_self:
            own = np.arange(rows.start, rows.stop)
            similarity[own - rows.start, own] = -np.inf
        order = np.argsort(-similarity, axis=1, kind="stable")
        if exclude_self:
            order = order[:, :-1]
        yield rows, order, ref_labels[order] == query_labels[rows, None]


def _per_query_scores(
    matches: np.ndarray, relevant: np.ndarray, ks: Sequence[int]
) -> dict[str, np.ndarray]:
    """Scores of each query from its ranked match flags and its R (``relevant``)."""
    depth = matches.shape[1]
    ranks = np.arange(1, depth + 1)
    within_r = ranks[None, :] <= relevant[:, None]
    hits_so_far = np.cumsum(matches, axis=1)
    safe_r = np.maximum(relevant, 1)
    top5 = min(5, depth)
    scores = {
        "precision_at_1": matches[:, 0].astype(float) if depth else np.zeros(len(matches)),
        "r_precision": (matches & within_r).sum(axis=1) / safe_r,
        "map_at_r": (hits_so_far / ranks * matches * within_r).sum(axis=1) / safe_r,
        "precision_at_5": matches[:, :top5].sum(axis=1) / max(top5, 1),
    }
    for k in ks:
        scores[f"top_{k}_accuracy"] = matches[:, : min(k, depth)].any(axis=1).astype(float)
    return scores


def retrieval_metrics(
    query_emb: ArrayLike,
    query_labels: ArrayLike,
    ref_emb: ArrayLike | None = None,
    ref_labels: ArrayLike | None = None,
    ks: Sequence[int] = (1, 5, 10),
) -> dict:
    """Mean retrieval scores of the queries against the references (see module doc).

    Returns precision_at_1, r_precision, map_at_r, precision_at_5, top_k_accuracy
    ({k: value}), num_queries, num_excluded_queries, and per_class: {"label": array,
    "queries": counts, <each score>: per-class means} for ``per_class_table``.
    Means are NaN when no query can be scored.
    """
    queries, q_labels, refs, r_labels = _queries_and_references(
        query_emb, query_labels, ref_emb, ref_labels
    )
    exclude_self = ref_emb is None
    ks = sorted({int(k) for k in ks})
    if any(k < 1 for k in ks):
        raise ValueError(f"k values must be >= 1, got {ks}")

    ref_counts = Counter(r_labels.tolist())
    relevant = np.array([ref_counts.get(label, 0) for label in q_labels.tolist()]) - int(
        exclude_self
    )
    answerable = relevant > 0
    per_query: dict[str, np.ndarray] = {}
    for rows, _order, matches in _ranked_matches(queries, q_labels, refs, r_labels, exclude_self):
        for name, values in _per_query_scores(matches, relevant[rows], ks).items():
            per_query.setdefault(name, np.zeros(len(queries)))[rows] = values
    return _summarise(per_query, q_labels, answerable, ks)


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else float("nan")


def _summarise(
    per_query: dict[str, np.ndarray], labels: np.ndarray, answerable: np.ndarray, ks: list[int]
) -> dict:
    kept = {name: values[answerable] for name, values in per_query.items()}
    kept_labels = labels[answerable]
    class_labels = np.unique(kept_labels)
    per_class: dict[str, np.ndarray] = {
        "label": class_labels,
        "queries": np.array([(kept_labels == c).sum() for c in class_labels], dtype=int),
    }
    for name, values in kept.items():
        per_class[name] = np.array(
            [values[kept_labels == c].mean() for c in class_labels], dtype=float
        )
    return {
        "precision_at_1": _mean(kept.get("precision_at_1", np.zeros(0))),
        "r_precision": _mean(kept.get("r_precision", np.zeros(0))),
        "map_at_r": _mean(kept.get("map_at_r", np.zeros(0))),
        "precision_at_5": _mean(kept.get("precision_at_5", np.zeros(0))),
        "top_k_accuracy": {k: _mean(kept.get(f"top_{k}_accuracy", np.zeros(0))) for k in ks},
        "num_queries": int(answerable.sum()),
        "num_excluded_queries": int((~answerable).sum()),
        "per_class": per_class,
    }


def per_class_table(metrics: dict) -> list[dict]:
    """One row per class (label, queries, each score) from ``retrieval_metrics``' output,
    worst MAP@R first so the characters that need attention lead the table."""
    per_class = metrics["per_class"]
    names = [name for name in per_class if name not in ("label", "queries")]
    rows = []
    for index, label in enumerate(per_class["label"]):
        row: dict = {"label": label.item() if hasattr(label, "item") else label}
        row["queries"] = int(per_class["queries"][index])
        row.update({name: float(per_class[name][index]) for name in names})
        rows.append(row)
    return sorted(rows, key=lambda row: (row.get("map_at_r", 0.0), str(row["label"])))


def confused_pairs(
    query_emb: ArrayLike,
    query_labels: ArrayLike,
    ref_emb: ArrayLike | None = None,
    ref_labels: ArrayLike | None = None,
    top: int = 10,
) -> list[tuple[Hashable, Hashable, int]]:
    """The ``top`` most frequent (a, b, count): queries of class a or b whose nearest
    neighbour belongs to the other. Pairs are unordered (a sorts before b), ordered by
    count, then by name."""
    queries, q_labels, refs, r_labels = _queries_and_references(
        query_emb, query_labels, ref_emb, ref_labels
    )
    exclude_self = ref_emb is None
    counts: Counter = Counter()
    for rows, order, matches in _ranked_matches(queries, q_labels, refs, r_labels, exclude_self):
        if order.shape[1] == 0:
            break
        for truth, nearest, hit in zip(
            q_labels[rows].tolist(), r_labels[order[:, 0]].tolist(), matches[:, 0], strict=True
        ):
            if not hit:
                counts[tuple(sorted((truth, nearest), key=str))] += 1
    ranked = sorted(counts.items(), key=lambda item: (-item[1], str(item[0][0]), str(item[0][1])))
    return [(a, b, count) for (a, b), count in ranked[:top]]


def verification_eer(embeddings: ArrayLike, labels: ArrayLike) -> tuple[float, float]:
    """Equal error rate over all pairs, and its cosine-similarity threshold.

    A pair is accepted as "same character" when its similarity >= threshold (on unit
    vectors, euclidean distance = sqrt(2 - 2 * similarity)). Over every observed
    similarity as a threshold, the one where the false accept rate (impostor pairs
    accepted) and false reject rate (genuine pairs rejected) are closest is chosen; the
    EER is their mean there, and the threshold reported is the middle between that
    similarity and the next lower one (the same rates hold all the way down to it).
    (NaN, NaN) when there are no genuine or no impostor pairs. Memory stays bounded
    however many pairs (see ``verification``).
    """
    unit = as_unit_array(embeddings)
    return pairwise_eer(unit, as_label_array(labels, len(unit)))
