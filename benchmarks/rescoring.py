"""Scoring rules on the same trained embeddings: does naming a face by something other
than its nearest training face name more faces right?

    python benchmarks/rescoring.py PROJECT [PROJECT ...] [--json FILE]

Each PROJECT is a trained and evaluated project (``benchmarks/quality.py --workdir DIR``
keeps one per seed as ``DIR/seed-N/project``). Its stored embeddings
(``models/embeddings.npz``, written by evaluate) are read, never recomputed, so every rule
sees exactly the same vectors. Each val and test face is named against the training
gallery, one face at a time (as ``anime-face-id identify`` sees one picture at a time), by
every rule below; the table counts the faces named right per project and in all, next to
``nearest`` (what identify does today). The README's "scoring rules" bullet comes from
this script.

Rules (each gives every query a score per character; the best score names it):

* nearest: the best cosine similarity to any of the character's gallery faces.
* top-k mean: the mean of the character's k best similarities.
* soft max t: a smooth maximum, t x log sum exp(similarity / t), over the character's faces.
* k-NN vote: the k nearest gallery faces vote for their character, weighted by
  similarity^power (ties broken by nearest).
* query expansion (Chum et al. 2007): the query plus its m nearest gallery faces,
  weighted by similarity^alpha, then nearest.
* gallery DBA: every gallery face averaged with its m - 1 nearest faces of its own
  character, then nearest.
* k-reciprocal re-ranking (Zhong et al. 2017): Jaccard distance between k-reciprocal
  neighbour sets, mixed with the original distance by lambda.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from anime_face_id.dataset import read_split  # noqa: E402
from anime_face_id.embedding_store import (  # noqa: E402
    EMBEDDINGS,
    embedder_fingerprint,
    stored_embeddings,
)
from anime_face_id.fileio import atomic_write_json  # noqa: E402
from anime_face_id.layout import EMBEDDER  # noqa: E402

# (queries (Q, D), gallery (G, D), gallery labels (G,)) -> (scores (Q, C), character names (C,))
Rule = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, list[str]]]


def per_character(scores: np.ndarray, labels: np.ndarray, reduce) -> tuple[np.ndarray, list[str]]:
    """Reduce (Q, G) gallery scores to (Q, C): ``reduce`` over each character's columns."""
    names = sorted(set(labels.tolist()))
    return np.stack([reduce(scores[:, labels == name]) for name in names], axis=1), names


def nearest(queries, gallery, labels):
    return per_character(queries @ gallery.T, labels, lambda s: s.max(1))


def top_k_mean(k: int) -> Rule:
    def rule(queries, gallery, labels):
        return per_character(
            queries @ gallery.T, labels, lambda s: -np.sort(-s, axis=1)[:, :k].mean(1)
        )

    return rule


def soft_max(temperature: float) -> Rule:
    def smooth_max(s: np.ndarray) -> np.ndarray:
        top = s.max(1, keepdims=True)
        return (top + temperature * np.log(np.exp((s - top) / temperature).sum(1, keepdims=True)))[
            :, 0
        ]

    def rule(queries, gallery, labels):
        return per_character(queries @ gallery.T, labels, smooth_max)

    return rule


def knn_vote(k: int, power: float) -> Rule:
    def rule(queries, gallery, labels):
        similarity = queries @ gallery.T
        tie_break, names = nearest(queries, gallery, labels)
        column = {name: i for i, name in enumerate(names)}
        votes = np.zeros((len(queries), len(names)))
        for row, neighbours in enumerate(np.argsort(-similarity, axis=1)[:, :k]):
            for j in neighbours:
                votes[row, column[labels[j]]] += max(similarity[row, j], 0.0) ** power
        return votes + 1e-6 * tie_break, names

    return rule


def query_expansion(m: int, alpha: float) -> Rule:
    def rule(queries, gallery, labels):
        similarity = queries @ gallery.T
        top = np.argsort(-similarity, axis=1)[:, :m]
        weights = np.take_along_axis(np.clip(similarity, 0, None), top, axis=1) ** alpha
        expanded = queries + (weights[:, :, None] * gallery[top]).sum(1)
        return nearest(unit_rows(expanded), gallery, labels)

    return rule


def gallery_dba(m: int) -> Rule:
    def rule(queries, gallery, labels):
        similarity = gallery @ gallery.T
        smoothed = np.empty_like(gallery)
        for i in range(len(gallery)):
            same = np.flatnonzero(labels == labels[i])
            closest = same[np.argsort(-similarity[i, same], kind="stable")[:m]]
            smoothed[i] = gallery[closest].sum(0)
        return nearest(queries, unit_rows(smoothed), labels)

    return rule


def k_reciprocal_distances(distances: np.ndarray, k1: int, k2: int, lam: float) -> np.ndarray:
    """Zhong et al. 2017: re-ranked distances from item 0 (the query) to items 1..N of a
    square distance matrix over the query and the gallery."""
    n = len(distances)
    rank = np.argsort(distances, axis=1, kind="stable")

    def reciprocal(i: int, k: int) -> np.ndarray:
        forward = rank[i, : k + 1]
        return forward[(rank[forward, : k + 1] == i).any(1)]

    v = np.zeros((n, n))
    for i in range(n):
        neighbours = reciprocal(i, k1)
        expanded = set(neighbours.tolist())
        for candidate in neighbours:
            theirs = reciprocal(candidate, round(k1 / 2))
            if len(np.intersect1d(theirs, neighbours)) > 2 / 3 * len(theirs):
                expanded.update(theirs.tolist())
        members = np.fromiter(expanded, int)
        weights = np.exp(-distances[i, members])
        v[i, members] = weights / weights.sum()
    if k2 > 1:
        v = v[rank[:, :k2]].mean(1)
    jaccard = 1 - np.minimum(v[0], v).sum(1) / np.maximum(v[0], v).sum(1)
    return ((1 - lam) * jaccard + lam * distances[0])[1:]


def k_reciprocal(k1: int, k2: int, lam: float) -> Rule:
    def rule(queries, gallery, labels):
        items = np.concatenate([np.zeros((1, gallery.shape[1])), gallery])
        rows = []
        for query in queries:
            items[0] = query
            distances = np.clip(2 - 2 * items @ items.T, 0, None)
            rows.append(-k_reciprocal_distances(distances, k1, k2, lam))
        return per_character(np.stack(rows), labels, lambda s: s.max(1))

    return rule


RULES: dict[str, Rule] = {
    "nearest (identify today)": nearest,
    "top-2 mean": top_k_mean(2),
    "top-3 mean": top_k_mean(3),
    "soft max t=0.02": soft_max(0.02),
    "soft max t=0.05": soft_max(0.05),
    "5-NN vote": knn_vote(5, 1),
    "10-NN vote, similarity^4": knn_vote(10, 4),
    "query expansion m=1": query_expansion(1, 3),
    "query expansion m=3": query_expansion(3, 3),
    "gallery DBA m=2": gallery_dba(2),
    "gallery DBA m=3": gallery_dba(3),
    "k-reciprocal k1=20 k2=6 lambda=0.3": k_reciprocal(20, 6, 0.3),
    "k-reciprocal k1=10 k2=3 lambda=0.3": k_reciprocal(10, 3, 0.3),
}
QUERY_SPLITS = ("val", "test")


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def project_splits(
    root: Path, with_holdout: bool = False
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{split: (unit embeddings, character labels)} of train, val and test (and holdout),
    from the embeddings evaluate stored for this project's checkpoint."""
    names = ("train", *QUERY_SPLITS, *(("holdout",) if with_holdout else ()))
    rows = {name: read_split(root, name) for name in names}
    wanted = [row["path"] for split in rows.values() for row in split]
    vectors = stored_embeddings(
        root / EMBEDDINGS, embedder_fingerprint(root / EMBEDDER), root, wanted
    )
    missing = [path for path in wanted if path not in vectors]
    if missing:
        raise SystemExit(
            f"{root}: {len(missing)} crop(s) have no stored embedding for this checkpoint "
            f"(first: {missing[0]}); run evaluate on the project first"
        )
    return {
        name: (
            unit_rows(np.stack([vectors[row["path"]] for row in split]))
            if split
            else np.zeros((0, 0)),
            np.array([row["character"] for row in split]),
        )
        for name, split in rows.items()
    }


def named_right(rule: Rule, queries: np.ndarray, truth: np.ndarray, gallery, labels) -> int:
    scores, names = rule(queries, gallery, labels)
    return int((np.array(names)[scores.argmax(1)] == truth).sum())


def compare(roots: list[Path], rules: dict[str, Rule] = RULES) -> dict:
    """{"queries": {split: [count per project]}, "right": {rule: {split: [count per project]}}}."""
    splits = [project_splits(root) for root in roots]
    return {
        "projects": [str(root) for root in roots],
        "queries": {name: [len(s[name][1]) for s in splits] for name in QUERY_SPLITS},
        "right": {
            rule_name: {
                name: [named_right(rule, *s[name], *s["train"]) for s in splits]
                for name in QUERY_SPLITS
            }
            for rule_name, rule in rules.items()
        },
    }


def table(result: dict, first_column: str = "rule") -> str:
    """Faces named right per project (val+test) and in all, each row against the first."""
    queries = result["queries"]
    total = sum(sum(counts) for counts in queries.values())
    baseline = next(iter(result["right"].values()))
    baseline_total = sum(sum(counts) for counts in baseline.values())
    header = "".join(f"  project {i} val+test" for i in range(len(result["projects"])))
    lines = [f"{first_column:36s}{header}  named right, all  vs the first row"]
    for rule_name, right in result["right"].items():
        cells = "".join(
            f"  {right['val'][i]:>8d}+{right['test'][i]:<11d}"
            for i in range(len(result["projects"]))
        )
        named = sum(sum(counts) for counts in right.values())
        lines.append(
            f"{rule_name:36s}{cells}  {named}/{total} = {named / total:.3f}"
            f"  {named - baseline_total:+d} faces"
        )
    return "\n".join(lines)


def run_comparison(
    description: str,
    compare_projects: Callable[[list[Path]], dict],
    first_column: str,
    argv: list[str] | None = None,
) -> None:
    """The command line of a comparison over projects: its table, and its counts as JSON."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("projects", nargs="+", type=Path, help="trained, evaluated projects")
    parser.add_argument("--json", type=Path, help="also write the counts here")
    args = parser.parse_args(argv)
    result = compare_projects(args.projects)
    print(table(result, first_column))
    if args.json:
        atomic_write_json(args.json, result)


def main(argv: list[str] | None = None) -> None:
    run_comparison(__doc__.split("\n\n")[0], compare, "rule", argv)


if __name__ == "__main__":
    main()
