"""The unknown-face threshold, calibrated on the validation split.

Every validation image is a query against the training gallery. Its score for its own
character is a *genuine* score (what a known face gets); its best score among the *other*
characters is an *impostor* score (what it would get if its character were not in the
gallery, i.e. an unknown face), and so is every held-out character's best score. The
threshold is the equal error rate point of these two distributions: as many known faces
are wrongly called unknown as unknown faces are wrongly given a name.

Without held-out characters that promise holds for val, not for characters never trained
on: training pushed the trained characters apart, so a val face's best *other* character
scores lower than an unseen character's face does (README: the quality benchmark's
naming rows; evaluate measures it in ``naming``). Held-out characters are honest impostors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from anime_face_id.search_index import best_per_character
from anime_face_id.verification import eer_threshold

# When nothing can be calibrated (no validation images, one character), no face is
# called unknown: every face gets its best match, and the metadata says why.
UNCALIBRATED_THRESHOLD = -1.0

# An equal error rate this high means the scores do not separate known from unknown faces
# (identical embeddings give 0.5): the calibration's note then warns of it.
CHANCE_ERROR_RATE = 0.5


@dataclass(frozen=True)
class Calibration:
    threshold: float
    method: str  # val_eer | configured | uncalibrated
    genuine: int  # known-face scores it was chosen from
    impostor: int  # unknown-face scores it was chosen from
    false_accept: float | None  # unknown faces given a name, at the threshold
    false_reject: float | None  # known faces called unknown, at the threshold
    note: str = ""
    # impostor scores from held-out characters' faces; 0: every impostor was a trained
    # character's face, and false_accept flatters characters never trained on
    held_out_impostors: int = 0


def calibration_scores(
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    classes: int,
    val: np.ndarray,
    val_labels: np.ndarray,
    holdout: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Genuine and impostor scores (see the module docstring). ``val_labels`` of -1 mark
    validation images of characters the gallery lacks: impostors, like held-out ones.
    The embeddings must be finite (``build_gallery`` checks them): a NaN score would
    silently move the threshold."""
    if not all(np.isfinite(part).all() for part in (gallery, val, holdout)):
        raise ValueError("calibration_scores needs finite embeddings (no NaN or inf)")
    genuine, impostor = [], []
    if len(val):
        scores = best_per_character(val, gallery, gallery_labels, classes)
        known = val_labels >= 0
        rows = np.flatnonzero(known)
        genuine.append(scores[rows, val_labels[rows]])
        others = scores[known].copy()
        others[np.arange(len(rows)), val_labels[rows]] = -np.inf
        impostor.append(others.max(axis=1))  # -inf with one character: dropped below
        impostor.append(scores[~known].max(axis=1))
    if len(holdout):
        impostor.append(best_per_character(holdout, gallery, gallery_labels, classes).max(axis=1))
    genuine_all = np.concatenate(genuine) if genuine else np.zeros(0, np.float32)
    impostor_all = np.concatenate(impostor) if impostor else np.zeros(0, np.float32)
    # the only non-finite scores left are -inf: "no other character to confuse it with"
    return genuine_all[np.isfinite(genuine_all)], impostor_all[np.isfinite(impostor_all)]


def calibrate(
    genuine: np.ndarray, impostor: np.ndarray, configured: float | None, held_out: int = 0
) -> Calibration:
    """``held_out``: how many of the impostor scores are held-out characters' faces."""
    counts = {"genuine": len(genuine), "impostor": len(impostor), "held_out_impostors": held_out}
    rates: dict = {"false_accept": None, "false_reject": None}
    threshold, note = None, ""
    if len(genuine) and len(impostor):
        threshold, far, frr = eer_threshold(genuine, impostor)
        rates = {"false_accept": far, "false_reject": frr}
        note = _separation_warning(far, frr)
    if configured is not None:
        if len(genuine) and len(impostor):
            rates = {
                "false_accept": float((impostor >= configured).mean()),
                "false_reject": float((genuine < configured).mean()),
            }
        return Calibration(float(configured), "configured", **counts, **rates, note=note)
    if threshold is None:
        return Calibration(
            UNCALIBRATED_THRESHOLD,
            "uncalibrated",
            **counts,
            **rates,
            note="no validation images of at least two gallery characters: every face "
            "gets its best match (set package.threshold to choose one)",
        )
    return Calibration(threshold, "val_eer", **counts, **rates, note=note)


def unseen_caveat(calibration: Calibration) -> str:
    """What false_accept does not say, when no held-out character was an impostor."""
    if calibration.false_accept is None or calibration.held_out_impostors:
        return ""
    return (
        f"false_accept ({calibration.false_accept:.3f}) was measured on faces of trained "
        "characters only; faces of characters never trained on are given a name far more "
        "often (README: Identifying characters in new pictures; split.holdout_characters "
        "calibrates on unseen ones)"
    )


def _separation_warning(false_accept: float, false_reject: float) -> str:
    """A warning when the equal error rate is no better than chance: the threshold is
    still the EER point, but it cannot tell known faces from unknown ones."""
    error_rate = (false_accept + false_reject) / 2
    if error_rate < CHANCE_ERROR_RATE:
        return ""
    return (
        f"the val faces do not separate known from unknown (EER {error_rate:.2f}): the "
        "threshold means little; train longer or check the data"
    )
