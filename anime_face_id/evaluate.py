"""The evaluate stage: the trained embedder scored as a retrieval and identification system.

For ``val`` and ``test``:
  retrieval within the split (each image queries all the other images of the split):
    precision_at_1, r_precision, map_at_r, precision_at_5, top_k_accuracy {"k": value}
  identification: the split's images query a gallery of the TRAINING images
    (what identifying a new picture does): identification.precision_at_1, .top_k_accuracy
  verification: equal error rate over all pairs, and its cosine-similarity threshold
``open_set`` (when characters were held out): retrieval and verification among the held-out
characters only, which the network never saw. ``naming``: what `identify` answers, with
the unknown-face threshold calibrated on val, for test faces (named right, called unknown,
named wrong) and held-out characters' faces (naming_outcomes.py). ``baseline_val`` (and ``baseline_open_set``):
the same numbers for the pooled ImageNet features of the untrained backbone, so users see
what training bought.

Outputs (relative to the project root, atomic): metrics/eval.json, models/embeddings.npz
(every split's embeddings, which package reuses: embedding_store.py) and, under plots/,
embedding_map.{png,csv}, retrieval_grid.png, per_character.{csv,png},
confused_pairs.csv and loss_curves.png (from plots/train_history.csv).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from anime_face_id import layout
from anime_face_id.checkpoint import LoadedCheckpoint, load_checkpoint
from anime_face_id.config import EvaluateConfig
from anime_face_id.device import place, resolve_device
from anime_face_id.embed import ImageNetFeatures
from anime_face_id.embedding_store import EMBEDDINGS, save_embeddings
from anime_face_id.errors import StageError
from anime_face_id.evaluation_data import (
    EmbeddedSplit,
    PathEmbedder,
    embed_split,
    gallery_without_misfiled,
    local_embedder,
    readable_splits,
)
from anime_face_id.evaluation_plots import PLOTS_DIR, write_plots
from anime_face_id.fileio import (
    atomic_write_json,
    json_safe,
    sweep_temporaries,
)
from anime_face_id.gallery import GalleryError
from anime_face_id.layout import EMBEDDER
from anime_face_id.metrics import (
    confused_pairs,
    per_class_table,
    retrieval_metrics,
    verification_eer,
)
from anime_face_id.model import PretrainedWeightsMissing
from anime_face_id.naming_outcomes import naming_report

logger = logging.getLogger("anime_face_id.evaluate")

EVAL_METRICS = Path("metrics/eval.json")
HEADLINE_METRICS = Path("metrics/headline.json")  # what `dvc metrics show` shows
BASELINE_FEATURES = "imagenet_efficientnet_lite0_pooled_1280"


# --------------------------------------------------------------------- embedding


# --------------------------------------------------------------------- metrics


def _top_k(values: dict[int, float]) -> dict[str, float]:
    return {str(k): value for k, value in values.items()}


def retrieval_report(split: EmbeddedSplit, ks: Sequence[int]) -> dict:
    """Retrieval within one split, and verification over its pairs."""
    scores = retrieval_metrics(split.embeddings, split.labels, ks=ks)
    eer, threshold = verification_eer(split.embeddings, split.labels)
    return {
        "precision_at_1": scores["precision_at_1"],
        "r_precision": scores["r_precision"],
        "map_at_r": scores["map_at_r"],
        "precision_at_5": scores["precision_at_5"],
        "top_k_accuracy": _top_k(scores["top_k_accuracy"]),
        "eer": eer,
        "eer_threshold": threshold,
        "num_images": len(split),
        "num_characters": len(set(split.labels.tolist())),
        "num_queries": scores["num_queries"],
    }


def identification_report(queries: EmbeddedSplit, gallery: EmbeddedSplit, ks) -> dict:
    scores = retrieval_metrics(
        queries.embeddings, queries.labels, gallery.embeddings, gallery.labels, ks=ks
    )
    return {
        "precision_at_1": scores["precision_at_1"],
        "top_k_accuracy": _top_k(scores["top_k_accuracy"]),
        "num_queries": scores["num_queries"],
        "gallery_images": len(gallery),
    }


def split_report(split: EmbeddedSplit, gallery: EmbeddedSplit, ks: Sequence[int]) -> dict:
    report = retrieval_report(split, ks)
    report["identification"] = identification_report(split, gallery, ks)
    return report


def per_character_rows(split: EmbeddedSplit, ks: Sequence[int]) -> list[dict]:
    """Retrieval within the split, per character, worst MAP@R first."""
    rows = per_class_table(retrieval_metrics(split.embeddings, split.labels, ks=ks))
    return [
        {
            "character": row.pop("label"),
            **{k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()},
        }
        for row in rows
    ]


def confused_pair_rows(queries: EmbeddedSplit, gallery: EmbeddedSplit, top: int) -> list[dict]:
    """Which characters' queries most often find the other first in the training gallery."""
    if not len(queries) or not len(gallery) or top == 0:
        return []
    pairs = confused_pairs(
        queries.embeddings, queries.labels, gallery.embeddings, gallery.labels, top=top
    )
    return [{"character_a": a, "character_b": b, "count": count} for a, b, count in pairs]


def baseline_reports(
    root: Path,
    rows: dict[str, list[dict[str, str]]],
    image_size: int,
    config: EvaluateConfig,
    device: torch.device,
    embedder: PathEmbedder | None = None,
    leave_out_misfiled: bool = False,
) -> dict[str, dict]:
    """``baseline_val`` (and ``baseline_open_set`` with held-out characters): the same
    numbers for the untrained backbone's pooled ImageNet features (``embedder`` computes
    them elsewhere; by default here), its gallery cleared of misfiled faces by its own
    features when ``leave_out_misfiled``."""
    if embedder is None:
        features = place(ImageNetFeatures(), device)
        embedder = local_embedder(features, root, image_size, device, config.batch_size)

    def embed(split_rows):
        return embed_split(embedder, split_rows)

    gallery = embed(rows["train"])
    if leave_out_misfiled:
        gallery = gallery_without_misfiled(gallery)
    reports = {"baseline_val": split_report(embed(rows["val"]), gallery, config.k)}
    if rows["holdout"]:
        reports["baseline_open_set"] = retrieval_report(embed(rows["holdout"]), config.k)
    for report in reports.values():
        report["features"] = BASELINE_FEATURES
    return reports


# --------------------------------------------------------------------- plots


# --------------------------------------------------------------------- the stage


def _checkpoint_summary(path: Path, loaded: LoadedCheckpoint) -> dict:
    return {
        "path": path.as_posix(),
        "best_epoch": loaded.best_epoch,
        "image_size": loaded.image_size,
        "embedding_dim": loaded.embedding_dim,
        "output_dim": loaded.output_dim,
        "characters": len(loaded.class_names),
    }


def evaluate(
    root: Path,
    config: EvaluateConfig,
    checkpoint: Path = EMBEDDER,
    run_id: str | None = None,
    embedder: PathEmbedder | None = None,
    baseline_embedder: Callable[[int], PathEmbedder] | None = None,
    leave_out_misfiled: bool = False,
) -> dict:
    """Score the checkpoint on every split, draw the plots, write metrics/eval.json.

    Returns the report as written (NaN as None). ``run_id`` (e.g. the MLflow run) is
    stored in the report when given. ``embedder`` embeds the splits with this checkpoint
    elsewhere (a Dask cluster's workers), ``baseline_embedder`` (given the input size) with
    the ImageNet features; by default both are embedded here. ``leave_out_misfiled``: the
    training gallery faces are searched without the faces package.misfiled leaves out, as
    identify searches them."""
    root = Path(root)
    device = resolve_device(config.device)
    loaded = load_checkpoint(root / checkpoint, device)
    rows, skipped = readable_splits(root)
    if not rows["train"]:
        raise StageError("data/splits/train.csv has no readable images: no gallery to search")

    if embedder is None:
        embedder = local_embedder(loaded.model, root, loaded.image_size, device, config.batch_size)

    def embed(split_rows):
        return embed_split(embedder, split_rows)

    gallery = embed(rows["train"])
    val, test, holdout = embed(rows["val"]), embed(rows["test"]), embed(rows["holdout"])
    logger.info(
        "embedded %d train, %d val, %d test, %d holdout images",
        len(gallery),
        len(val),
        len(test),
        len(holdout),
    )
    # package builds the gallery from these instead of embedding the same crops again
    vectors = {
        path: vector
        for split in (gallery, val, test, holdout)
        for path, vector in zip(split.paths, split.embeddings, strict=True)
    }
    save_embeddings(root / EMBEDDINGS, loaded.sha256, root, vectors)
    embedded_train = len(gallery)
    if leave_out_misfiled:
        gallery = gallery_without_misfiled(gallery)
    report: dict = {
        "checkpoint": _checkpoint_summary(Path(checkpoint), loaded),
        # training faces the identification gallery left out as misfiled (package.misfiled)
        "gallery_left_out_misfiled": embedded_train - len(gallery),
        "val": split_report(val, gallery, config.k),
        "test": split_report(test, gallery, config.k),
    }
    if len(holdout):
        report["open_set"] = retrieval_report(holdout, config.k)
    warnings = []
    try:
        report["naming"] = naming_report(gallery, val, test, holdout, loaded.sha256)
    except GalleryError as error:  # NaN embeddings of a diverged model: the rest still reports
        warnings.append(f"naming not measured: {error}")
        logger.warning(warnings[-1])
    pairs = confused_pair_rows(val, gallery, config.confused_pairs)
    report["confused_pairs"] = pairs
    if config.baseline:
        try:
            elsewhere = baseline_embedder(loaded.image_size) if baseline_embedder else None
            report.update(
                baseline_reports(
                    root, rows, loaded.image_size, config, device, elsewhere, leave_out_misfiled
                )
            )
        except PretrainedWeightsMissing as error:
            warnings.append(f"baseline skipped: {error}")
            logger.warning(warnings[-1])
    for problem in (unranked_val(report), below_baseline(report)):
        if problem:
            warnings.append(problem)
            logger.warning(problem)
    sweep_temporaries(root / PLOTS_DIR)
    report["plots"] = write_plots(
        root, val, gallery, per_character_rows(val, config.k), pairs, config
    )
    report["skipped_images"] = [{"path": p, "reason": r} for p, r in skipped.items()]
    report["warnings"] = warnings
    if run_id is not None:
        report["run_id"] = run_id
    report = json_safe(report)
    atomic_write_json(root / EVAL_METRICS, report)
    atomic_write_json(root / HEADLINE_METRICS, json_safe(headline(report, root)))
    log_summary(report)
    return report


def headline(report: dict, root: Path) -> dict:
    """A handful of numbers for `dvc metrics show` and `dvc exp show`, the rest being in
    metrics/eval.json: how often a face is named right (identification P@1, as `identify`
    does it), how well its character's other pictures rank (MAP@R), the same for characters
    never trained on, the verification EER, the untrained ImageNet features' identification
    P@1 beside the model's, and the share of pictures with a face found. Short keys: the
    table `dvc metrics show` prints must fit 120 columns."""

    def value(*keys: str) -> float | None:
        part: object = report
        for key in keys:
            part = part.get(key) if isinstance(part, dict) else None
        return round(part, 4) if isinstance(part, float) else part

    return {
        "identification_p1": value("val", "identification", "precision_at_1"),
        "map_at_r": value("val", "map_at_r"),
        "open_p1": value("open_set", "precision_at_1"),
        "open_map_at_r": value("open_set", "map_at_r"),
        "eer": value("val", "eer"),
        "untrained_p1": value("baseline_val", "identification", "precision_at_1"),
        "face_found": pictures_with_a_face(root),
    }


def pictures_with_a_face(root: Path) -> float | None:
    """Of the pictures the crop stage read, the share it found at least one face in."""
    found = {row["source"] for row in layout.read_table(root, layout.FACES_MANIFEST, ("source",))}
    rejects = layout.read_table(root, layout.FACES_REJECTS, ("source", "reason"))
    without = {row["source"] for row in rejects if row["reason"] == layout.NO_FACE} - found
    read = len(found) + len(without)
    return round(len(found) / read, 4) if read else None


def unranked_val(report: dict) -> str | None:
    """A warning when no val face has another face of its character in val to find: the
    val MAP@R (the score package ranks models by), precision@1 and EER are then not
    measured at all."""
    if report["val"].get("num_queries"):
        return None
    return (
        f"val has no character with two faces ({report['val'].get('num_images', 0)} val "
        "images): MAP@R, precision@1 and the EER are not measured, and package cannot rank "
        "this model. Raise split.val or collect more pictures per character."
    )


# What "below the baseline" is judged on: the headline (a val face named against the
# training gallery, as identify names it) and the ranking of every val face.
BASELINE_CHECKS = (
    ("val identification P@1", ("identification", "precision_at_1")),
    ("val MAP@R", ("map_at_r",)),
)


def _number(part: dict, keys: tuple[str, ...]) -> float | None:
    for key in keys:
        part = part.get(key) if isinstance(part, dict) else None
    return part if isinstance(part, int | float) else None


def below_baseline(report: dict) -> str | None:
    """A warning when the trained embedder names or ranks the val faces worse than the
    ImageNet features it started from: training then made the model worse, and a user
    should know before serving it."""
    worse = []
    for label, keys in BASELINE_CHECKS:
        trained = _number(report.get("val", {}), keys)
        untrained = _number(report.get("baseline_val", {}), keys)
        # NaN (no val faces to rank) is no verdict either: it compares False both ways
        if trained is not None and untrained is not None and trained < untrained:
            worse.append(f"{label} {trained:.3f} < {untrained:.3f}")
    if not worse:
        return None
    return (
        f"the trained embedder is below the untrained ImageNet baseline: {', '.join(worse)}. "
        "Look at plots/loss_curves.png; more epochs, more crops per character or a lower "
        "train.lr usually help."
    )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def log_summary(report: dict) -> None:
    for name in ("val", "test", "open_set", "baseline_val", "baseline_open_set"):
        if name in report:
            part = report[name]
            identified = part.get("identification", {}).get("precision_at_1")
            logger.info(
                "%s: P@1 %s MAP@R %s R-precision %s EER %s | identification P@1 %s",
                name,
                _fmt(part["precision_at_1"]),
                _fmt(part["map_at_r"]),
                _fmt(part["r_precision"]),
                _fmt(part.get("eer")),
                _fmt(identified),
            )
