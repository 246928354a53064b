"""The gallery: embeddings of known faces that new faces are compared with.

A face is named after the gallery images it is most similar to (cosine similarity of unit
embeddings); a character's score is its best-matching image's similarity. Faces whose best
score stays below the calibrated threshold are reported as unknown.

The gallery is built from curated crops (the training split by default) with the trained
embedder, without training anything, so a character whose crops went through the data
stages can be added by rebuilding it (``anime-face-id gallery rebuild``). It is saved as
``models/gallery.npz`` (plain arrays, loaded with ``allow_pickle=False``) together with the
sha256 of the embedder checkpoint it was made with: a gallery made by another embedder
lives in another embedding space, and is refused as stale instead of giving wrong names.

The unknown-face threshold is calibrated on the validation split (calibration.py); search
over the gallery is search_index.py.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from anime_face_id import layout
from anime_face_id.calibration import Calibration, calibrate, calibration_scores, unseen_caveat
from anime_face_id.config import IdentifyConfig, Params
from anime_face_id.embedding_store import (
    EMBEDDINGS,
    PathEmbedder,
    stored_embeddings,
)
from anime_face_id.errors import StageError
from anime_face_id.fileio import atomic_write_bytes
from anime_face_id.misfiled import looks_like_by
from anime_face_id.search_index import (
    CharacterGroups,
    ExactIndex,
    SearchIndex,
    make_index,
    unit_rows,
)

GALLERY = Path("models/gallery.npz")
FORMAT_VERSION = 1
# misfiled faces listed with their nearest gallery faces (each is a search of the gallery;
# an embedding that calls thousands misfiled needs retraining, not a longer list)
NEAREST_LISTED = 50


class GalleryError(StageError):
    """The gallery file is missing, unreadable, or unusable with this embedder."""


class StaleGallery(GalleryError):
    """The gallery was built with another embedder than the one in use."""


# --------------------------------------------------------------------- the gallery


@dataclass
class Gallery:
    embeddings: np.ndarray  # (N, D) float32, unit rows
    labels: np.ndarray  # (N,) int, index into class_names
    class_names: list[str]
    paths: list[str]  # POSIX, relative to the project root
    embedder: str  # sha256 of the checkpoint file the embeddings came from
    calibration: Calibration
    meta: dict = field(default_factory=dict)
    _index: SearchIndex | None = field(default=None, repr=False)
    _grouped: tuple[CharacterGroups, np.ndarray] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def threshold(self) -> float:
        return self.calibration.threshold

    def use_index(self, config: IdentifyConfig) -> None:
        self._index = make_index(self.embeddings, config)

    @property
    def index(self) -> SearchIndex:
        if self._index is None:
            self._index = ExactIndex(self.embeddings)
        return self._index

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most similar gallery items of each query (see ``SearchIndex``)."""
        return self.index.search(np.atleast_2d(queries), k)

    @property
    def grouped(self) -> tuple[CharacterGroups, np.ndarray]:
        """The character grouping and the unit embeddings in its column order (cached)."""
        if self._grouped is None:
            groups = CharacterGroups.of(self.labels)
            self._grouped = (groups, self.embeddings[groups.order])  # unit rows already
        return self._grouped

    def character_of(self, index: int) -> str:
        return self.class_names[int(self.labels[index])]

    def check_embedder(self, fingerprint: str, where: str = "the gallery") -> None:
        if fingerprint != self.embedder:
            raise StaleGallery(
                f"{where} was built with another embedder (checkpoint sha256 "
                f"{self.embedder[:12]}…, the model in use is {fingerprint[:12]}…): its "
                "embeddings cannot be compared with this model's. Rebuild it: "
                "`.venv/bin/anime-face-id gallery rebuild` (or `.venv/bin/dvc repro package`)."
            )

    def check_crop(self, margin: float, size: int, where: str = "the gallery") -> None:
        """Faces must be cut as the gallery's were: another crop.margin or crop.size
        frames them differently, and every score drops without a word."""
        built = self.meta.get("crop")
        if not isinstance(built, dict) or built == {"margin": margin, "size": size}:
            return  # galleries from before the crop was recorded are not judged
        raise StaleGallery(
            f"{where} holds faces cut with crop.margin {built.get('margin')} and crop.size "
            f"{built.get('size')}, but params.yaml now says {margin} and {size}: faces would be "
            "cut differently from the gallery's. Run `.venv/bin/dvc repro` (crops again and "
            "rebuilds it), or put params.yaml's crop settings back."
        )


def save_gallery(gallery: Gallery, path: Path) -> None:
    # load_gallery refuses non-finite embeddings: never write a file it would refuse
    if not np.isfinite(gallery.embeddings).all():
        raise GalleryError(
            f"not writing {path}: its embeddings are not finite numbers (NaN or inf): "
            "the embedder checkpoint is broken; retrain with a lower train.lr"
        )
    meta = {
        **gallery.meta,
        "format_version": FORMAT_VERSION,
        "embedder": gallery.embedder,
        "calibration": asdict(gallery.calibration),
    }
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        embeddings=gallery.embeddings.astype(np.float32),
        labels=gallery.labels.astype(np.int32),
        # fixed-width unicode arrays: loadable without pickle
        class_names=np.array(gallery.class_names, dtype=np.str_),
        paths=np.array(gallery.paths, dtype=np.str_),
        meta=np.array(json.dumps(meta, sort_keys=True)),
    )
    atomic_write_bytes(path, buffer.getvalue())


def load_gallery(path: Path) -> Gallery:
    """The saved gallery; a missing, damaged or foreign file is a GalleryError."""
    path = Path(path)
    if not path.is_file():
        raise GalleryError(
            f"{path} not found: build it with `.venv/bin/anime-face-id gallery rebuild` "
            "(or `.venv/bin/dvc repro package`)"
        )
    try:
        gallery = _read_gallery(path)
    except KeyError as error:
        raise GalleryError(f"{path} is not a readable gallery (no {error}): rebuild it") from None
    except (OSError, EOFError, ValueError, TypeError, zipfile.BadZipFile) as error:
        raise GalleryError(f"{path} is not a readable gallery ({error}): rebuild it") from None
    _check_shapes(gallery, path)
    return gallery


def _read_gallery(path: Path) -> Gallery:
    """Every array and field of the file, checked for type; a damaged or foreign file raises
    one of the errors ``load_gallery`` turns into a GalleryError."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    meta = json.loads(str(arrays["meta"]))
    if not isinstance(meta, dict):
        raise ValueError("its metadata is not a mapping")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"gallery format {meta.get('format_version')}")
    embeddings, labels = arrays["embeddings"], arrays["labels"]
    if embeddings.dtype.kind != "f" or not np.isfinite(embeddings).all():
        raise ValueError("its embeddings are not finite numbers")
    if labels.dtype.kind not in "iu":
        raise ValueError("its labels are not integers")
    trained = meta.get("trained_characters", [])
    if not isinstance(trained, list):
        raise ValueError("trained_characters is not a list")
    return Gallery(
        embeddings=unit_rows(embeddings),
        labels=labels.astype(np.int64),
        class_names=[str(name) for name in arrays["class_names"]],
        paths=[str(p) for p in arrays["paths"]],
        embedder=str(meta["embedder"]),
        calibration=_checked_calibration(meta["calibration"]),
        meta=meta,
    )


def _checked_calibration(values: dict) -> Calibration:
    calibration = Calibration(**values)
    threshold = calibration.threshold
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise ValueError(f"its threshold is {threshold!r}, not a number")
    # float32 similarities of unit rows reach 1.0000002, and a calibrated threshold lies
    # between two of them
    if not -1.001 <= threshold <= 1.001:  # also false for NaN
        raise ValueError(f"its threshold {threshold} is not a similarity in [-1, 1]")
    held_out = calibration.held_out_impostors
    if isinstance(held_out, bool) or not isinstance(held_out, int) or held_out < 0:
        raise ValueError(f"its held_out_impostors is {held_out!r}, not a count")
    return calibration


def _check_shapes(gallery: Gallery, path: Path) -> None:
    n = len(gallery.paths)
    consistent = gallery.embeddings.shape[0] == n and gallery.labels.shape == (n,)
    if n and (gallery.labels.min() < 0 or gallery.labels.max() >= len(gallery.class_names)):
        consistent = False
    if not consistent:
        raise GalleryError(f"{path}: arrays of different lengths or bad labels: rebuild it")
    if n == 0:  # only a hand-made file: rebuilding refuses to write one
        raise GalleryError(f"{path} holds no images, so no face could be named: rebuild it")


# --------------------------------------------------------------------- building


@dataclass
class GalleryRows:
    gallery: list[dict[str, str]]
    calibration_gallery: list[dict[str, str]]  # train split: never holds a val image
    val: list[dict[str, str]]
    holdout: list[dict[str, str]]


def _split_rows(root: Path, name: str) -> list[dict[str, str]]:
    return layout.read_table(root, layout.split_csv(name), layout.SPLIT_COLUMNS)


def gallery_rows(root: Path, source: str) -> GalleryRows:
    """The rows to embed. The threshold is always calibrated on val against the train
    split (a gallery holding the val images themselves would make every val query a
    perfect match)."""
    train = _split_rows(root, "train")
    if source == "curated":
        gallery = layout.read_table(root, layout.CURATED_MANIFEST, ("character", "path"), "review")
    else:
        gallery = layout.read_table(root, layout.split_csv("train"), layout.SPLIT_COLUMNS, "split")
    return GalleryRows(gallery, train, _split_rows(root, "val"), _split_rows(root, "holdout"))


def _labels(rows: list[dict[str, str]], class_names: list[str]) -> np.ndarray:
    label_of = {name: index for index, name in enumerate(class_names)}
    return np.array([label_of.get(row["character"], -1) for row in rows], dtype=np.int64)


def without_misfiled(
    rows: list[dict[str, str]], vectors: dict[str, np.ndarray]
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """``rows`` (each with an embedding in ``vectors``) split into the faces that look like
    their own character and the misfiled ones (misfiled.py), each of those with the
    character it looks like and by how much, the most telling first."""
    if not rows:
        return [], []
    names = np.array([row["character"] for row in rows])
    looks, margins = looks_like_by(np.stack([vectors[row["path"]] for row in rows]), names)
    kept = [row for row, name, look in zip(rows, names, looks, strict=True) if name == look]
    left_out = [
        {
            "path": row["path"],
            "character": row["character"],
            "looks_like": str(look),
            "margin": round(float(margin), 4),
        }
        for row, name, look, margin in zip(rows, names, looks, margins, strict=True)
        if name != look
    ]
    left_out.sort(key=lambda face: -face["margin"])  # stable: gallery order on a tie
    return kept, left_out


def build_gallery(
    rows: GalleryRows,
    vectors: dict[str, np.ndarray],
    embedder: str,
    threshold: float | None = None,
    meta: dict | None = None,
    leave_out_misfiled: bool = False,
) -> Gallery:
    """The gallery of ``rows`` given each path's embedding (``vectors``; rows whose path
    has none, e.g. unreadable images, are left out), with its calibrated threshold.
    ``leave_out_misfiled``: faces that look like another character are left out of the
    gallery and of the one calibration searches (listed in ``meta["left_out_misfiled"]``)."""
    _require_finite(vectors)
    keep = [row for row in rows.gallery if row["path"] in vectors]
    left_out: list[dict[str, str]] = []
    if leave_out_misfiled:
        keep, left_out = without_misfiled(keep, vectors)
        calibration_gallery = [row for row in rows.calibration_gallery if row["path"] in vectors]
        rows = replace(rows, calibration_gallery=without_misfiled(calibration_gallery, vectors)[0])
    class_names = sorted({row["character"] for row in keep})
    if not class_names:
        raise GalleryError("no readable gallery images: run the data stages first")

    def embedded(subset: list[dict[str, str]]) -> tuple[np.ndarray, list[dict[str, str]]]:
        present = [row for row in subset if row["path"] in vectors]
        stacked = [vectors[row["path"]] for row in present]
        return (np.stack(stacked) if stacked else np.zeros((0, 1), np.float32)), present

    train, train_rows = embedded(rows.calibration_gallery)
    val, val_rows = embedded(rows.val)
    holdout, _ = embedded(rows.holdout)
    train_names = sorted({row["character"] for row in train_rows})
    genuine, impostor = (
        calibration_scores(
            train,
            _labels(train_rows, train_names),
            len(train_names),
            val,
            _labels(val_rows, train_names),
            holdout,
        )
        if train_rows
        else (np.zeros(0), np.zeros(0))
    )
    embeddings, _ = embedded(keep)
    embeddings = unit_rows(embeddings)
    for face in left_out[:NEAREST_LISTED]:  # why, for plots/gallery_left_out.png
        face["nearest"] = _nearest(vectors[face["path"]], embeddings, keep)
    return Gallery(
        embeddings=embeddings,
        labels=_labels(keep, class_names),
        class_names=class_names,
        paths=[row["path"] for row in keep],
        embedder=embedder,
        calibration=calibrate(genuine, impostor, threshold, held_out=len(holdout)),
        meta={
            **(meta or {}),
            "items": len(keep),
            "characters": len(class_names),
            "left_out_misfiled": left_out,
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )


def _nearest(
    vector: np.ndarray, embeddings: np.ndarray, rows: list[dict[str, str]], count: int = 5
) -> list[dict]:
    similarity = embeddings @ unit_rows(vector[None])[0]
    order = np.argsort(-similarity, kind="stable")[:count]
    return [
        {
            "path": rows[i]["path"],
            "character": rows[i]["character"],
            "similarity": round(float(similarity[i]), 4),
        }
        for i in order
    ]


def _require_finite(vectors: dict[str, np.ndarray]) -> None:
    """A NaN or inf embedding would give NaN scores (calibration cannot use them) and a
    gallery that load_gallery refuses: stop before calibrating or writing anything."""
    broken = [path for path, vector in vectors.items() if not np.isfinite(vector).all()]
    if broken:
        raise GalleryError(
            f"the embedder gave non-finite vectors (NaN or inf) for {len(broken)} image(s) "
            f"(first: {broken[0]}): its weights are unusable; retrain with a lower train.lr"
        )


def rebuild_gallery(
    root: Path,
    params: Params,
    checkpoint: Path,
    destination: Path,
    source: str | None = None,
    device: str | None = None,
    embedder: PathEmbedder | None = None,
) -> tuple[Gallery, dict[str, str]]:
    """Embed the gallery rows with the checkpoint's network, calibrate, save atomically.

    Returns the gallery and the images left out ({path: reason}). Nothing is trained.
    ``embedder`` embeds what is not stored yet elsewhere (a Dask cluster's workers)."""
    # The network stack is imported here, so that reading a gallery stays light.
    from anime_face_id.checkpoint import load_checkpoint
    from anime_face_id.dataset import require_paths_inside, unreadable_images
    from anime_face_id.device import resolve_device
    from anime_face_id.evaluation_data import local_embedder

    root = Path(root)
    config = params.package
    source = source or config.gallery_source
    rows = gallery_rows(root, source)
    everything = rows.gallery + rows.calibration_gallery + rows.val + rows.holdout
    require_paths_inside(everything, f"the {source} gallery tables", root)
    paths = list(dict.fromkeys(row["path"] for row in everything))
    torch_device = resolve_device(device or config.device)
    loaded = load_checkpoint(checkpoint, torch_device)
    fingerprint = loaded.sha256
    # what evaluate already embedded with this very network is not embedded again (nor
    # decoded to check it: the store holds the sha256 of the very file it embedded)
    vectors = stored_embeddings(root / EMBEDDINGS, fingerprint, root, paths, loaded.output_dim)
    reused = len(vectors)
    unseen = [path for path in paths if path not in vectors]
    skipped = unreadable_images(root, unseen)
    todo = [path for path in unseen if path not in skipped]
    if todo:
        embed = embedder or local_embedder(
            loaded.model, root, loaded.image_size, torch_device, config.batch_size
        )
        vectors.update(zip(todo, embed(todo), strict=True))
    meta = {
        "source": source,
        "image_size": loaded.image_size,
        "embedding_dim": loaded.output_dim,
        "trained_characters": loaded.class_names,
        "crop": {"margin": params.crop.margin, "size": params.crop.size},
        "embeddings": {"reused": reused, "computed": len(todo)},
    }
    gallery = build_gallery(
        rows, vectors, fingerprint, config.threshold, meta, config.leaves_out_misfiled
    )
    save_gallery(gallery, destination)
    return gallery, skipped


def describe(gallery: Gallery) -> dict:
    """What ``gallery info`` prints and the package stage records."""
    counts = np.bincount(gallery.labels, minlength=len(gallery.class_names))
    trained = set(gallery.meta.get("trained_characters", []))
    return {
        "items": len(gallery),
        "characters": len(gallery.class_names),
        "images_per_character": {
            name: int(count) for name, count in zip(gallery.class_names, counts, strict=True)
        },
        "not_trained_on": sorted(set(gallery.class_names) - trained) if trained else [],
        # faces that look like another character than their name (package.misfiled)
        "left_out_misfiled": gallery.meta.get("left_out_misfiled", []),
        "threshold": gallery.threshold,
        "calibration": asdict(gallery.calibration),
        "unseen_characters": unseen_caveat(gallery.calibration) or None,
        "source": gallery.meta.get("source"),
        "embedder_sha256": gallery.embedder,
        "built_at": gallery.meta.get("built_at"),
        # images whose embeddings came from evaluate's store, and those embedded here
        "embeddings": gallery.meta.get("embeddings"),
    }
