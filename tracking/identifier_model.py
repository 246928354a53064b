"""The identifier as an MLflow pyfunc model: base64 pictures in, named faces out.

The model is logged as code (``tracking/served_model.py``), not as a pickled object, and
bundles everything identification needs as artifacts: the embedder checkpoint,
the gallery (embeddings, character names, calibrated threshold), the detector and crop
settings and the detector's own file (the CenterNet weights, or the `lbp` cascade). The core package is logged as code,
so `mlflow.pyfunc.load_model` and `mlflow models serve --env-manager local` need nothing of
the project but this model.

Input: a DataFrame with a column `image` (base64 PNG/JPEG/..., a `data:` URL prefix is
allowed) and optionally `name` (echoed as `picture`). Output: one object per row, exactly
what `anime-face-id identify --json` gives per picture (anime_face_id.identify); a bad row
gets `status: "error"` and its reason, never an exception, so a server keeps serving.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow.pyfunc

REPO = Path(__file__).resolve().parents[1]
SETTINGS_FILE = "identify_settings.json"


class IdentifierModel(mlflow.pyfunc.PythonModel):
    # `predict` has no type hints on purpose (see there); this tells MLflow not to wrap it
    # for type-hint validation, which would only warn on every import that they are missing.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        from anime_face_id.config import CropConfig, IdentifyConfig
        from anime_face_id.identify import build_identifier

        artifacts = context.artifacts
        settings = json.loads(Path(artifacts["settings"]).read_text(encoding="utf-8"))
        crop = dict(settings["crop"])
        # the bundled cascade or detector weights, wherever MLflow unpacked the model
        crop["cascade"] = artifacts.get("cascade")
        crop["detector_weights"] = artifacts.get("detector_weights")
        self.identifier = build_identifier(
            Path(artifacts["checkpoint"]),
            Path(artifacts["gallery"]),
            CropConfig.model_validate(crop),
            IdentifyConfig.model_validate(settings["identify"]),
        )

    # No type hints on the arguments, on purpose: with them MLflow would take its signature
    # from the hints and accept only the `inputs` request format, not `dataframe_split`.
    def predict(self, context, model_input, params=None):
        if "image" not in getattr(model_input, "columns", ()):
            raise ValueError("expected a column 'image' holding base64-encoded pictures")
        names = (
            list(model_input["name"])
            if "name" in model_input.columns
            else [None] * len(model_input)
        )
        rows = [
            (text, name if isinstance(name, str) and name else f"#{number}")
            for number, (text, name) in enumerate(zip(model_input["image"], names, strict=True))
        ]
        # the rows' faces share forward passes
        return [result.to_json() for result in self.identifier.identify_base64_rows(rows)]


def _signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "image"), ColSpec("string", "name", required=False)])
    )


def _input_example():
    """One request row, shown with the model in MLflow and checked against the signature:
    a 1-pixel PNG (too small for a face, or an unknown one with `crop.detector: none`)."""
    import pandas as pd

    pixel = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
    return pd.DataFrame({"image": [pixel], "name": ["example.png"]})


def _settings(params) -> dict:
    crop = params.crop.model_dump(mode="json")
    crop.pop("cascade")  # replaced by the bundled files at load time
    crop.pop("detector_weights")
    return {"crop": crop, "identify": params.identify.model_dump(mode="json")}


def log_identifier(root: Path, params, checkpoint: Path, gallery: Path) -> str:
    """Log the identifier as a pyfunc model in the active run; returns its model URI."""
    from anime_face_id.faces.cascade import resolve_cascade
    from anime_face_id.faces.detectors import detector_weights_path

    with tempfile.TemporaryDirectory() as scratch:
        settings = Path(scratch) / SETTINGS_FILE
        settings.write_text(json.dumps(_settings(params), indent=2), encoding="utf-8")
        artifacts = {
            "checkpoint": str(checkpoint),
            "gallery": str(gallery),
            "settings": str(settings),
        }
        if params.crop.detector == "lbp":
            artifacts["cascade"] = str(resolve_cascade(Path(root), params.crop.cascade))
        if params.crop.detector == "centernet":
            artifacts["detector_weights"] = str(detector_weights_path(Path(root), params.crop))
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(REPO / "tracking" / "served_model.py"),  # code, not a pickle
            artifacts=artifacts,
            code_paths=[str(REPO / "anime_face_id"), str(REPO / "tracking")],
            signature=_signature(),
            input_example=_input_example(),
            pip_requirements=[],
        )
    return info.model_uri
