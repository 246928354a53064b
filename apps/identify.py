"""Who is in this picture? `make app` runs `streamlit run apps/identify.py` on 127.0.0.1.

Upload a picture: every face is boxed and labelled with the best matching character and
its score (or "unknown" below the calibrated threshold), and each face is listed with its
next candidates and the nearest training images. The work is anime_face_id.identify's, the
same as the CLI's and the served model's; this script only lays it out.

The project root is `--root DIR` (after `--` on the streamlit command line), else the
environment variable ANIME_FACE_ID_ROOT, else the working directory.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

import streamlit as st
from PIL import Image

from anime_face_id import identify, layout
from anime_face_id.annotate import annotate
from anime_face_id.config import ConfigError, load_params
from anime_face_id.errors import StageError
from anime_face_id.faces.cascade import CascadeError
from anime_face_id.gallery import GALLERY
from anime_face_id.identify_results import FaceResult
from anime_face_id.imaging import ImageRejected, load_rgb
from anime_face_id.markdown_text import literal
from anime_face_id.picture_input import decode_picture

PARAMS = Path("params.yaml")
UPLOAD_TYPES = ["png", "jpg", "jpeg", "webp", "gif", "bmp", "tif", "tiff"]
THUMBNAIL_SIDE = 112
CROP_SIDE = 160


def project_root() -> Path:
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--root")
    args, _ = parser.parse_known_args(sys.argv[1:])
    return Path(args.root or os.environ.get("ANIME_FACE_ID_ROOT") or ".").resolve()


def file_stamp(root: Path) -> str:
    """Changes whenever the params, the model or the gallery change: a new cache key."""
    parts = []
    for path in (PARAMS, layout.EMBEDDER, GALLERY):
        try:
            stat = (root / path).stat()
            parts.append(f"{stat.st_size}:{stat.st_mtime_ns}")
        except OSError:
            parts.append("-")
    return "|".join(parts)


@st.cache_resource(show_spinner="Loading the model and the gallery…", max_entries=2)
def load_identifier(root: str, stamp: str) -> identify.Identifier:
    # ``stamp`` only keys the cache: a retrained model or rebuilt gallery is loaded anew
    params = load_params(Path(root) / PARAMS)
    return identify.load_identifier(Path(root), params)


@st.cache_data(max_entries=2000, show_spinner=False)
def thumbnail(path: str, side: int) -> bytes | None:
    try:
        image = load_rgb(path)
    except (ImageRejected, OSError):
        return None
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------- pieces of the page


def sidebar(identifier: identify.Identifier) -> None:
    info = identifier.describe()
    calibration = identifier.gallery.calibration
    with st.sidebar:
        st.subheader("Model")
        st.markdown(
            f"- **{info['characters']}** characters, **{info['gallery_items']}** gallery images\n"
            f"- unknown below similarity **{info['threshold']}** ({calibration.method})\n"
            f"- detector `{info['detector']}`, search `{info['index']}`\n"
            f"- embedder `{info['embedder_sha256'][:12]}`"
        )
        if calibration.false_accept is not None:
            st.caption(
                f"At this threshold, on validation data: {calibration.false_accept:.0%} of "
                f"unknown faces get a name, {calibration.false_reject:.0%} of known faces "
                "are called unknown."
            )
        if calibration.note:
            st.caption(calibration.note)


def face_card(root: Path, image: Image.Image, number: int, face: FaceResult) -> None:
    with st.container(border=True, key=f"face-{number}"):
        left, right = st.columns([1, 4])
        x, y, side = face.crop
        left.image(image.crop((x, y, x + side, y + side)).resize((CROP_SIDE, CROP_SIDE)))
        verdict = (
            literal(face.label)
            if face.known
            else f"unknown (closest: {literal(face.candidates[0].character)})"
        )
        right.subheader(f"{number}. {verdict} · {face.score:.2f}")
        if len(face.candidates) > 1:
            right.markdown(
                "Next: "
                + ", ".join(f"{literal(c.character)} {c.score:.2f}" for c in face.candidates[1:])
            )
        neighbours = [n for n in face.neighbours if thumbnail(str(root / n.path), THUMBNAIL_SIDE)]
        if neighbours:
            right.caption("Nearest training images")
            columns = right.columns(len(neighbours))
            for column, neighbour in zip(columns, neighbours, strict=True):
                column.image(
                    thumbnail(str(root / neighbour.path), THUMBNAIL_SIDE),
                    caption=f"{literal(neighbour.character)} {neighbour.similarity:.2f}",
                )


def show_result(root: Path, identifier: identify.Identifier, name: str, data: bytes) -> None:
    config = identifier.config
    try:
        crop = identifier.crop
        image = decode_picture(data, config.max_bytes, crop.max_pixels, crop.max_decode_mb * 2**20)
    except ImageRejected as error:
        st.error(f"{literal(name)}: {error.reason}")
        return
    result = identifier.identify_image(name, image)
    if result.status == "error":
        st.error(f"{literal(name)}: {result.error}")
        return
    if result.status == "no_face":
        st.warning(
            f"No face detected in {literal(name)} (detector `{identifier.detector.name}`). Faces that "
            "are very small, tilted or stylised are often missed: try a tighter crop."
        )
        st.image(image, width="stretch" if image.width > 700 else image.width)
        return
    known = sum(face.known for face in result.faces)
    st.success(
        f"{len(result.faces)} face(s) in {literal(name)}: {known} named, "
        f"{len(result.faces) - known} unknown."
    )
    annotated = annotate(image, result.faces)
    # small pictures at their own size; large ones as wide as the page allows
    st.image(
        annotated,
        width="stretch" if annotated.width > 700 else annotated.width,
        caption=literal(name),
    )
    for number, face in enumerate(result.faces, start=1):
        face_card(root, image, number, face)


def main() -> None:
    st.set_page_config(page_title="Who is this? · anime-face-id", layout="wide")
    st.title("Who is this?")
    root = project_root()
    try:
        identifier = load_identifier(str(root), file_stamp(root))
    except (ConfigError, StageError, CascadeError, OSError) as error:
        st.error(str(error))
        st.info(
            "The app needs a trained model and its gallery: run `.venv/bin/dvc repro` (or, after "
            "adding images of a new character, `.venv/bin/anime-face-id gallery rebuild`)."
        )
        return
    sidebar(identifier)
    upload = st.file_uploader("A picture with one or more faces", type=UPLOAD_TYPES, key="picture")
    if upload is None:
        st.info("Upload a picture (drag and drop works) to see who is in it.")
        return
    show_result(root, identifier, upload.name, upload.getvalue())


main()
