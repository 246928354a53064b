"""The trained embedder as an MLflow pyfunc model: base64 images in, embeddings out.

Logged with the core package as code, so `mlflow.pyfunc.load_model` (and
`mlflow models serve`) need nothing of the project but this model directory.
"""

from __future__ import annotations

import base64
from pathlib import Path

import mlflow.pyfunc

REPO = Path(__file__).resolve().parents[1]


class EmbedderModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from anime_face_id.checkpoint import load_checkpoint

        self.loaded = load_checkpoint(Path(context.artifacts["checkpoint"]))

    def predict(self, context, model_input, params=None):
        import pandas as pd

        from anime_face_id.embed import embed_images
        from anime_face_id.imaging import ImageRejected, decode

        images, errors = [], []
        for text in model_input["image"]:
            try:
                images.append(decode(base64.b64decode(text, validate=True))[0])
                errors.append("")
            except (ImageRejected, ValueError) as error:
                images.append(None)
                errors.append(getattr(error, "reason", str(error)))
        good = [image for image in images if image is not None]
        vectors = iter(embed_images(self.loaded.model, good, self.loaded.image_size).tolist())
        return pd.DataFrame(
            {
                "embedding": [next(vectors) if image is not None else None for image in images],
                "error": errors,
            }
        )


def log_embedder(checkpoint: Path) -> str:
    """Log the checkpoint as a pyfunc model in the active run; returns its model URI."""
    import pandas as pd
    from mlflow.models import infer_signature

    example = pd.DataFrame({"image": ["<base64 PNG or JPEG>"]})
    signature = infer_signature(example, pd.DataFrame({"embedding": [[0.0]], "error": [""]}))
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=EmbedderModel(),
        artifacts={"checkpoint": str(checkpoint)},
        code_paths=[str(REPO / "anime_face_id"), str(REPO / "tasks")],
        signature=signature,
        pip_requirements=[],
    )
    return info.model_uri
