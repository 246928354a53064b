"""What a registered model version says on MLflow's Models page."""

from __future__ import annotations

from tracking.runs import VERSION_METRICS, version_description

METRICS = {
    "val_identification_precision_at_1": 0.95,
    "baseline_val_identification_precision_at_1": 0.64,
    "val_map_at_r": 0.9123456,
    "open_set_precision_at_1": 0.9,
    "open_set_map_at_r": 0.72,
    "val_eer": 0.021,
    "unknown_threshold": 0.412345,
    "unrelated_metric": 1.0,
}


def test_the_headline_comes_first_rounded_then_the_detector() -> None:
    text = version_description(METRICS, {"crop.detector": "centernet"})
    assert text.startswith("val identification P@1 0.95; untrained identification P@1 0.64; ")
    assert "val MAP@R 0.9123;" in text and "unknown-face threshold 0.4123;" in text
    assert "open-set MAP@R 0.72; val EER 0.021" in text
    assert text.endswith("; detector centernet")
    assert "unrelated" not in text and "WARNING" not in text


def test_only_the_numbers_the_run_has_are_named() -> None:
    assert version_description({"val_map_at_r": 0.5}, {}) == "val MAP@R 0.5"


def test_a_model_below_its_untrained_baseline_says_so_first() -> None:
    text = version_description(METRICS, {"below_untrained_baseline": "True"})
    assert text.startswith("WARNING: below the untrained ImageNet baseline")
    assert "val identification P@1 0.95" in text
    assert "WARNING" not in version_description(METRICS, {"below_untrained_baseline": "False"})


def test_every_number_named_is_one_evaluate_or_package_logs() -> None:
    from flows.evaluate import NUMBERS, SPLITS

    logged = {f"{split}_{name}" for split in (*SPLITS, "baseline_val") for name in NUMBERS}
    logged |= {f"{split}_identification_precision_at_1" for split in (*SPLITS, "baseline_val")}
    logged |= {"unknown_threshold", "gallery_characters", "gallery_items"}  # package's
    assert {name for name, _ in VERSION_METRICS} <= logged
