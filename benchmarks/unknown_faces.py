"""Unknown faces on the same trained embeddings: which score tells a face of a character the
gallery lacks from a face of one it has?

    python benchmarks/unknown_faces.py PROJECT [PROJECT ...] [--json FILE]

Each PROJECT is a trained and evaluated project with held-out characters
(``benchmarks/quality.py --workdir DIR`` keeps one per seed as ``DIR/seed-N/project``). Its
stored embeddings are read, never recomputed. Every face is scored against the training
gallery (a character scores its best gallery face's similarity, as ``identify`` does) and
named by its best character; a *knownness* rule then says how sure that name is, and a face
whose knownness is below the rule's threshold is called unknown.

Each rule's threshold is calibrated as the package stage calibrates today's: on val alone,
at the equal error rate between genuine knownness (the val face's own character in the
gallery) and impostor knownness (the same face with its own character taken out of the
gallery, the stand-in for a character the gallery lacks). The held-out characters' faces are
the honest unknown faces: training never saw them, and neither did calibration.

Printed per rule, pooled over the projects: test faces named right / called unknown / named
wrong and held-out faces called unknown at the val-calibrated threshold; the same with the
threshold moved so that 10% of the val faces are called unknown (every rule at one cost to
known faces, so the unseen faces rejected compare fairly); and the area under the ROC curve
of knownness between the test faces named right and the held-out faces, which no threshold
moves.

Rules (s1 >= s2 >= ... are a face's character scores):

* best: s1 (what ``identify`` does).
* margin: s1 - s2, how far the best character leads the next.
* best - a x second: between the two.
* z-score: (s1 - mean of the others) / their standard deviation.
* top-m of best: the mean of the best character's m best gallery similarities (a face like
  several of a character's pictures, not one drawing by the same artist).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from anime_face_id.fileio import atomic_write_json  # noqa: E402
from anime_face_id.search_index import CharacterGroups  # noqa: E402
from anime_face_id.verification import eer_threshold  # noqa: E402
from benchmarks.rescoring import project_splits  # noqa: E402

# (character scores (Q, C), face x gallery similarities (Q, G), gallery character index
#  (G,), the character each face is named (Q,)) -> knownness (Q,): how sure that name is
Knownness = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]
VAL_REJECTED = 0.10  # the fixed cost to known faces at which the rules are compared


def character_scores(similarity: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """(Q, C): each character's best gallery similarity; -inf for a character with none."""
    groups = CharacterGroups.of(labels)
    return groups.maxima(similarity[:, groups.order], classes)


def _named_and_others(scores: np.ndarray, named: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The named character's score, and the other characters' scores (NaN where a
    character has no gallery face)."""
    rows = np.arange(len(scores))
    others = np.where(np.isfinite(scores), scores, np.nan)
    others[rows, named] = np.nan
    return scores[rows, named], others


def best(scores, similarity, labels, named):
    return _named_and_others(scores, named)[0]


def best_minus(weight: float) -> Knownness:
    def rule(scores, similarity, labels, named):
        own, others = _named_and_others(scores, named)
        return own - weight * np.nanmax(others, axis=1)

    return rule


def z_score(scores, similarity, labels, named):
    own, others = _named_and_others(scores, named)
    spread = np.maximum(np.nanstd(others, axis=1), 1e-6)
    return (own - np.nanmean(others, axis=1)) / spread


def top_m_of_named(m: int) -> Knownness:
    def rule(scores, similarity, labels, named):
        return np.array(
            [
                np.sort(similarity[i, labels == character])[::-1][:m].mean()
                for i, character in enumerate(named)
            ]
        )

    return rule


RULES: dict[str, Knownness] = {
    "best (identify today)": best,
    "margin s1 - s2": best_minus(1.0),
    "s1 - 0.5 x s2": best_minus(0.5),
    "z-score of s1": z_score,
    "mean of the best character's top 2": top_m_of_named(2),
    "mean of the best character's top 3": top_m_of_named(3),
}


def knownness_of(rule: Knownness, similarity, labels, classes) -> tuple[np.ndarray, np.ndarray]:
    """(knownness, the character named) of faces named by their best character."""
    scores = character_scores(similarity, labels, classes)
    named = scores.argmax(axis=1)
    return rule(scores, similarity, labels, named), named


def val_calibration_scores(rule, similarity, labels, classes, truth):
    """(genuine, impostor) knownness of the val faces: of their own character with it in the
    gallery (as ``calibration_scores`` takes a val face's own score), and of their best
    character with their own taken out of the gallery."""
    genuine = rule(character_scores(similarity, labels, classes), similarity, labels, truth)
    impostor = np.empty(len(truth))
    for c in np.unique(truth):
        faces, kept = truth == c, labels != c
        impostor[faces] = knownness_of(rule, similarity[faces][:, kept], labels[kept], classes)[0]
    return genuine, impostor[np.isfinite(impostor)]  # NaN or -inf: no other character


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counting half (Mann-Whitney)."""
    if not len(positive) or not len(negative):
        return float("nan")
    values = np.concatenate([positive, negative])
    order = values.argsort(kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    for value in np.unique(values):  # average ranks of ties
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    u = ranks[: len(positive)].sum() - len(positive) * (len(positive) + 1) / 2
    return float(u / (len(positive) * len(negative)))


def project_outcomes(splits: dict, rule: Knownness) -> dict:
    """Counts for one project and rule at both thresholds, and the knownness values."""
    gallery, gallery_names = splits["train"]
    names = sorted(set(gallery_names.tolist()))
    index = {name: i for i, name in enumerate(names)}
    labels = np.array([index[n] for n in gallery_names])
    classes = len(names)

    val_x, val_names = splits["val"]
    val_truth = np.array([index[n] for n in val_names])
    genuine, impostor = val_calibration_scores(rule, val_x @ gallery.T, labels, classes, val_truth)
    at_eer = eer_threshold(genuine, impostor)[0]
    at_cost = float(np.quantile(genuine, VAL_REJECTED))

    test_x, test_names = splits["test"]
    test_truth = np.array([index[n] for n in test_names])
    test_known, test_named = knownness_of(rule, test_x @ gallery.T, labels, classes)
    held_x, _ = splits["holdout"]
    held_known, _ = knownness_of(rule, held_x @ gallery.T, labels, classes)

    def at(threshold: float) -> dict:
        accepted = test_known >= threshold
        return {
            "test_right": int((accepted & (test_named == test_truth)).sum()),
            "test_unknown": int((~accepted).sum()),
            "test_wrong": int((accepted & (test_named != test_truth)).sum()),
            "held_unknown": int((held_known < threshold).sum()),
        }

    return {
        "test_faces": len(test_truth),
        "held_faces": len(held_known),
        "eer": at(at_eer),
        "cost": at(at_cost),
        "right_scores": test_known[test_named == test_truth].tolist(),
        "held_scores": held_known.tolist(),
    }


def compare(roots: list[Path], rules: dict[str, Knownness] = RULES) -> dict:
    splits = [project_splits(root, with_holdout=True) for root in roots]
    for root, split in zip(roots, splits, strict=True):
        if not len(split["holdout"][1]):
            raise SystemExit(f"{root}: no held-out characters (split.holdout_characters is 0)")
    result = {"projects": [str(root) for root in roots], "rules": {}}
    for name, rule in rules.items():
        per_project = [project_outcomes(split, rule) for split in splits]
        aucs = [
            roc_auc(np.array(p["right_scores"]), np.array(p["held_scores"])) for p in per_project
        ]
        result["rules"][name] = {
            "auc_per_project": aucs,
            "projects": [
                {k: v for k, v in p.items() if not k.endswith("_scores")} for p in per_project
            ],
        }
    return result


def pooled(projects: list[dict], key: str) -> dict:
    test = sum(p["test_faces"] for p in projects)
    held = sum(p["held_faces"] for p in projects)
    total = {k: sum(p[key][k] for p in projects) for k in projects[0][key]}
    return {
        "named right": total["test_right"] / test,
        "unknown": total["test_unknown"] / test,
        "named wrong": total["test_wrong"] / test,
        "unseen unknown": total["held_unknown"] / held,
    }


def table(result: dict) -> str:
    head = (
        f"{'rule':38s} {'at the val EER threshold: right / unknown / wrong, unseen unknown':68s}"
        f" {f'{VAL_REJECTED:.0%} of val called unknown':38s} AUC per project"
    )
    lines = [head]
    for name, rule in result["rules"].items():
        cells = []
        for key in ("eer", "cost"):
            p = pooled(rule["projects"], key)
            cells.append(
                f"{p['named right']:.3f} / {p['unknown']:.3f} / {p['named wrong']:.3f}, "
                f"{p['unseen unknown']:.3f}"
            )
        aucs = " ".join(f"{a:.3f}" for a in rule["auc_per_project"])
        lines.append(f"{name:38s} {cells[0]:68s} {cells[1]:38s} {aucs}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("projects", nargs="+", type=Path, help="trained, evaluated projects")
    parser.add_argument("--json", type=Path, help="also write the counts here")
    args = parser.parse_args(argv)
    result = compare(args.projects)
    print(table(result))
    if args.json:
        atomic_write_json(args.json, result)


if __name__ == "__main__":
    main()
