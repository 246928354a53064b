"""Review face crops in the browser: `make review` runs `streamlit run apps/review.py`.

Every click appends one row to data/review/decisions.csv at once (anime_face_id.decisions:
locked, fsynced, append-only), so closing the tab or killing the app loses nothing and
two tabs can work side by side. Images and manifests are only read. What to show and in
which order lives in anime_face_id.review_queue; this script only lays it out.

The project root is `--root DIR` (after `--` on the streamlit command line), else the
environment variable ANIME_FACE_ID_ROOT, else the working directory.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
from pathlib import Path

import streamlit as st

from anime_face_id import layout, suspicion
from anime_face_id import review_queue as rq
from anime_face_id.chunked_embedding import client_embedder, dask_client
from anime_face_id.config import ComputeConfig, ConfigError, Params, load_params
from anime_face_id.imaging import ImageRejected
from anime_face_id.markdown_text import literal

GRID_COLUMNS = 6
VIEWS = ("Face crops", "One by one", "Manual boxes")
# Material icons rather than emoji: they render without an emoji font (headless Linux).
BADGES = {
    "pending": ":material/hourglass_empty: pending",
    "accepted": ":green[:material/check_circle: accepted]",
    "rejected": ":red[:material/cancel: rejected]",
    "relabelled": ":orange[:material/swap_horiz: relabelled to {target}]",
}
KEEP = ""  # the relabel selector's "no relabel" option


def project_root() -> Path:
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--root")
    args, _ = parser.parse_known_args(sys.argv[1:])
    return Path(args.root or os.environ.get("ANIME_FACE_ID_ROOT") or ".").resolve()


# ---------------------------------------------------------------- cached work


@st.cache_resource(show_spinner="Loading the feature network…")
def _features(spec_id: str, _spec: suspicion.FeatureSpec) -> suspicion.Features:
    return _spec.load()  # a failure is not cached: a fixed models/embedder.pt is retried


@st.cache_resource(show_spinner="Connecting to the Dask cluster…")
def _dask_client(address: str | None, workers: int):
    """compute.runner dask: one client for the app's lifetime (with no address, a local
    cluster of ``workers`` processes); the exit stack is kept so neither is closed."""
    compute = ComputeConfig(runner="dask", dask_address=address, dask_workers=workers)
    stack = contextlib.ExitStack()
    return stack, stack.enter_context(dask_client(compute))


def _elsewhere(root: Path, state: rq.ReviewState):
    """Where the crops are embedded: on the Dask cluster with compute.runner dask (the
    client is made when there is something to embed), else None (here)."""
    compute = state.params.compute
    if compute.runner != "dask":
        return None

    def on_the_cluster(spec: suspicion.FeatureSpec):
        try:
            _, client = _dask_client(compute.dask_address, compute.dask_workers)
        except (OSError, TimeoutError) as error:  # no scheduler there: embed here
            st.warning(f"Dask cluster unreachable ({error}); embedding the crops here.")
            return None
        return client_embedder(
            client, root, spec.network, suspicion.BATCH_SIZE, "auto", spec.image_size
        )

    return on_the_cluster


@st.cache_data(max_entries=5000, show_spinner=False)
def _thumbnail(path: str, stamp: str, side: int) -> bytes | None:
    # ``stamp`` (size and mtime) is part of the cache key: a re-cropped file is re-read.
    try:
        return rq.thumbnail(Path(path), side)
    except (ImageRejected, OSError):
        return None


def thumbnail(root: Path, path: str, side: int = rq.THUMBNAIL_SIDE) -> bytes | None:
    try:
        stamp = suspicion.file_stamp(root / path)
    except OSError:
        return None
    return _thumbnail(str(root / path), stamp, side)


def embeddings_for(
    root: Path, state: rq.ReviewState, name: str
) -> tuple[suspicion.Embeddings, str]:
    """The character's crop embeddings and a line saying which features they are."""
    spec, why = suspicion.feature_spec(root, state.params.train.image_size)
    if st.session_state.get("unusable_features") == spec.id:
        spec = suspicion.imagenet_spec(state.params.train.image_size)
        why = f"{layout.EMBEDDER.as_posix()} could not be loaded"
    bar = st.empty()

    def progress(done: int, total: int) -> None:
        bar.progress(
            done / total,
            text=f"Embedding the crops of {literal(name)} to put suspicious ones first: {done} of "
            f"{total} (first time only; cached in {suspicion.CACHE_DIR.as_posix()})",
        )

    paths = [crop.path for crop in state.crops_of(name)]
    elsewhere = _elsewhere(root, state)
    try:
        result = suspicion.embed_files(root, paths, _cached(spec), progress, elsewhere=elsewhere)
    except suspicion.FeaturesUnavailable as error:
        st.session_state["unusable_features"] = spec.id
        st.warning(f"{error}; ordering by ImageNet features instead.")
        spec = suspicion.imagenet_spec(state.params.train.image_size)
        why = f"{layout.EMBEDDER.as_posix()} could not be loaded"
        result = suspicion.embed_files(root, paths, _cached(spec), progress, elsewhere=elsewhere)
    bar.empty()
    return result, f"{spec.description} ({why})"


def _cached(spec: suspicion.FeatureSpec) -> suspicion.FeatureSpec:
    return dataclasses.replace(spec, load=lambda: _features(spec.id, spec))


# ---------------------------------------------------------------- callbacks


def _flash(message: str) -> None:
    st.session_state.setdefault("flash", []).append(message)


def _guarded(action, *args) -> bool:
    # A failed write (full disk, a damaged log header) must be shown, not lost in a log.
    try:
        action(*args)
    except (OSError, ValueError) as error:
        st.session_state.setdefault("errors", []).append(f"Not saved: {error}")
        return False
    return True


def on_decide(root: Path, path: str, decision: str) -> None:
    _guarded(rq.record, root, path, decision)


def on_relabel(root: Path, crop: rq.Crop, key: str) -> None:
    target = st.session_state[key]
    if target == KEEP:
        if crop.status == "relabelled":  # back to its own character
            _guarded(rq.record, root, crop.path, "accept")
        return
    _guarded(rq.record, root, crop.path, "relabel", target)


def on_accept_rest(root: Path, params: Params, name: str) -> None:
    try:
        accepted = rq.accept_rest(root, params, name)
    except (OSError, ValueError) as error:
        st.session_state.setdefault("errors", []).append(f"Not saved: {error}")
        return
    _flash(f"Accepted the {accepted} pending crop(s) of {literal(name)}.")


def on_add_box(root: Path, image: rq.RawImage, key: str) -> None:
    # Read the inputs here rather than binding the box at render time: a value typed just
    # before the click reaches the session state before this callback runs, not the args.
    box = tuple(int(st.session_state[f"box-{name}-{key}"]) for name in ("x", "y", "w", "h"))
    if _guarded(rq.add_box, root, image, box, st.session_state[f"box-who-{key}"]):
        _flash("Box saved: the next `.venv/bin/dvc repro` crops it.")


def on_skip(crop: rq.Crop) -> None:
    st.session_state.setdefault("skipped", set()).add(crop.path)


# ---------------------------------------------------------------- pieces of the page


def show_messages() -> None:
    for message in st.session_state.pop("flash", []):
        st.toast(message)
    for message in st.session_state.pop("errors", []):
        st.error(message)


def show_counts(counts: rq.Counts) -> None:
    cells = st.columns(5)
    cells[0].metric("Pending", counts.pending)
    cells[1].metric("Accepted", counts.accepted)
    cells[2].metric("Rejected", counts.rejected)
    cells[3].metric("Relabelled away", counts.relabelled_out)
    cells[4].metric("Relabelled in · manual boxes", f"{counts.relabelled_in} · {counts.manual}")


def describe(item: rq.QueueItem) -> str:
    crop = item.crop
    parts = [BADGES[crop.status].format(target=literal(crop.target))]
    if item.problem:
        parts.append(f":red[:material/broken_image: unreadable: {item.problem}]")
    if item.distance is not None:
        parts.append(f"distance {item.distance:.3f}")
    others = sorted({literal(other.target) for other in item.duplicates})
    if others:
        parts.append(
            ":orange[:material/content_copy: same picture as a crop of " + ", ".join(others) + "]"
        )
    return " · ".join(parts)


def relabel_selector(root: Path, names: list[str], crop: rq.Crop, key: str) -> None:
    # The selector mirrors the log on every run, so another tab's decision shows here too.
    wanted = crop.target if crop.status == "relabelled" else KEEP
    if st.session_state.get(key) != wanted:  # an unchanged value is left alone
        st.session_state[key] = wanted
    # Choosing KEEP on a relabelled crop gives it back to its own character.
    st.selectbox(
        "Relabel to",
        [KEEP, *(name for name in names if name != crop.character)],
        key=key,
        format_func=lambda option: option or "Relabel to…",
        on_change=on_relabel,
        args=(root, crop, key),
        label_visibility="collapsed",
    )


def decision_buttons(root: Path, crop: rq.Crop, key: str, shortcuts: bool = False) -> None:
    # Grid cards are narrow: icon-only buttons there, words (and keys) in the one-by-one
    # view. No tooltips on this page: an open one swallows the next click elsewhere.
    accept, reject = st.columns(2)
    accept.button(
        "Accept (A)" if shortcuts else ":material/check:",
        key=f"accept-{key}",
        type="primary" if crop.status == "accepted" else "secondary",
        on_click=on_decide,
        args=(root, crop.path, "accept"),
        width="stretch",
        shortcut="A" if shortcuts else None,
    )
    reject.button(
        "Reject (X)" if shortcuts else ":material/close:",
        key=f"reject-{key}",
        type="primary" if crop.status == "rejected" else "secondary",
        on_click=on_decide,
        args=(root, crop.path, "reject"),
        width="stretch",
        shortcut="X" if shortcuts else None,
    )


def crop_card(root: Path, names: list[str], item: rq.QueueItem) -> None:
    with st.container(border=True, key=f"card-{item.key}"):
        data = thumbnail(root, item.crop.path)
        if data is None:
            st.warning(f"cannot show {item.crop.path}")
        else:
            st.image(data, width="stretch")
        st.caption(describe(item))
        decision_buttons(root, item.crop, item.key)
        relabel_selector(root, names, item.crop, f"relabel-{item.key}")


def crops_view(root: Path, state: rq.ReviewState, name: str) -> None:
    counts = state.counts(name)
    show_counts(counts)
    st.button(
        f"Accept the rest of {literal(name)} ({counts.pending} pending)",
        key="accept-rest",
        icon=":material/done_all:",
        disabled=counts.pending == 0,
        on_click=on_accept_rest,
        args=(root, state.params, name),
    )
    if not counts.total:
        st.info(f"No face crops of {literal(name)}: see Manual boxes for its raw images.")
        return
    embeddings, features = embeddings_for(root, state, name)
    items = rq.build_queue(state, name, embeddings)
    show = st.radio("Show", rq.FILTERS, key="show", horizontal=True, format_func=str.capitalize)
    shown = rq.filter_items(items, show)
    size = state.params.review.app.page_size
    pages = rq.page_count(len(shown), size)
    page = st.pagination(pages, key=f"page-{item_slug(state, name)}-{show}") if pages > 1 else 1
    st.caption(
        f"{len(shown)} crop(s), most suspicious first: unreadable, then the same picture filed "
        "under another character, then farthest from the character's other crops in the "
        f"space of {features}."
    )
    visible = rq.page_items(shown, page, size)
    for start in range(0, len(visible), GRID_COLUMNS):
        for column, item in zip(
            st.columns(GRID_COLUMNS), visible[start : start + GRID_COLUMNS], strict=False
        ):
            with column:
                crop_card(root, state.names, item)


def item_slug(state: rq.ReviewState, name: str) -> str:
    return state.params.slugs[name]


def one_by_one_view(root: Path, state: rq.ReviewState, name: str) -> None:
    show_counts(state.counts(name))
    skipped = st.session_state.get("skipped", set())
    embeddings, _ = embeddings_for(root, state, name)
    queue = [
        item
        for item in rq.build_queue(state, name, embeddings)
        if item.crop.status == "pending" and item.crop.path not in skipped
    ]
    if not queue:
        st.success(f"Nothing left to review for {literal(name)} in this view.")
        return
    item = queue[0]
    picture, controls = st.columns([2, 1])
    data = thumbnail(root, item.crop.path, side=512)
    if data is None:
        picture.warning(f"cannot show {item.crop.path}")
    else:
        picture.image(data, width="stretch")
    with controls:
        st.caption(f"{len(queue)} pending · {describe(item)}")
        st.code(item.crop.path, language=None)
        decision_buttons(root, item.crop, item.key, shortcuts=True)
        st.button(
            "Skip (S)", key=f"skip-{item.key}", shortcut="S", on_click=on_skip, args=(item.crop,)
        )
        relabel_selector(root, state.names, item.crop, f"relabel-{item.key}")
        st.caption("Keys: A accept · X reject · S skip")


def box_inputs(image: rq.RawImage, key: str) -> rq.Box:
    side = max(1, min(image.width, image.height) // 3)
    x_col, y_col = st.columns(2)
    w_col, h_col = st.columns(2)
    x = x_col.number_input(
        "x", 0, max(0, image.width - 1), (image.width - side) // 2, 1, key=f"box-x-{key}"
    )
    y = y_col.number_input(
        "y", 0, max(0, image.height - 1), (image.height - side) // 2, 1, key=f"box-y-{key}"
    )
    w = w_col.number_input("width", 1, max(1, image.width), side, 1, key=f"box-w-{key}")
    h = h_col.number_input("height", 1, max(1, image.height), side, 1, key=f"box-h-{key}")
    return int(x), int(y), int(w), int(h)


def manual_boxes_list(root: Path, image: rq.RawImage) -> None:
    for index, (box, who) in enumerate(image.manual):
        text, remove = st.columns([3, 1])
        text.write(f"{who}: {','.join(map(str, box))}")
        remove.button(
            "Remove",
            key=f"remove-{rq.item_key(image.path)}-{index}",
            on_click=_guarded,
            args=(rq.withdraw_box, root, image, box),
        )


def boxes_view(root: Path, state: rq.ReviewState, name: str) -> None:
    images = rq.raw_images(state, name)
    if not images:
        st.info(f"No raw images of {literal(name)} in {layout.RAW_MANIFEST.as_posix()}.")
        return
    missing = sum(image.no_face and not image.manual for image in images)
    st.caption(
        f"{missing} of {len(images)} raw image(s) have no detected face and no box yet; they "
        "come first. A saved box becomes a crop at the next `.venv/bin/dvc repro`."
    )
    by_path = {image.path: image for image in images}
    path = st.selectbox(
        "Raw image",
        list(by_path),
        key=f"raw-{item_slug(state, name)}",
        format_func=lambda option: rq.raw_label(by_path[option]),
    )
    image = _picture(rq.with_size, root, by_path[path])
    if image is None:
        return
    key = rq.item_key(image.path)
    picture, controls = st.columns([3, 2])
    with controls:
        box = box_inputs(image, key)
        st.selectbox("Who is it", state.names, index=state.names.index(name), key=f"box-who-{key}")
        problem = _box_problem(image, box)
        if problem:
            st.error(problem)
        st.button(
            "Save box",
            key=f"save-box-{key}",
            type="primary",
            icon=":material/add_box:",
            disabled=bool(problem),
            on_click=on_add_box,
            args=(root, image, key),
        )
        if not problem:
            params = state.params
            preview = _picture(rq.crop_preview, root, image, box, params.crop.margin, 128)
            if preview is not None:
                st.image(preview, caption="the crop it will make", width=128)
        manual_boxes_list(root, image)
    with picture:
        shown = _picture(
            rq.box_preview, root, image, None if problem or is_saved(image, box) else box
        )
        if shown is not None:
            st.image(
                shown,
                caption="yellow: detector · green: saved boxes · red: the box being typed",
                width="stretch",
            )


def _picture(draw, root: Path, image: rq.RawImage, *args):
    """``draw``'s picture of a raw image, or None and a message when the file is gone or
    no longer decodes (deleted or replaced since the crop stage ran)."""
    try:
        return draw(root, image, *args)
    except (ImageRejected, OSError) as error:
        reason = error.reason if isinstance(error, ImageRejected) else str(error)
        st.error(f"Cannot show {image.path}: {reason}. Run `.venv/bin/dvc repro` to refresh.")
        return None


def is_saved(image: rq.RawImage, box: rq.Box) -> bool:
    return any(saved == box for saved, _ in image.manual)


def _box_problem(image: rq.RawImage, box: rq.Box) -> str:
    try:
        rq.check_box(image, box)
    except ValueError as error:
        return str(error)
    return ""


def progress_table(state: rq.ReviewState) -> list[dict[str, object]]:
    rows = []
    for name in state.names:
        counts = state.counts(name)
        rows.append(
            {"character": name, "pending": counts.pending, "done": counts.total - counts.pending}
        )
    return rows


# ---------------------------------------------------------------- the page


def load(root: Path) -> rq.ReviewState | None:
    try:
        params = load_params(root / "params.yaml")
    except ConfigError as error:
        st.error(f"{error}")
        return None
    try:
        return rq.load_state(root, params)
    except rq.FacesNotReady as error:
        st.info(f"No face crops to review yet. {error}")
    except ValueError as error:  # a manifest or the decisions log is unreadable
        st.error(f"Cannot read the review inputs: {error}")
    return None


def main() -> None:
    st.set_page_config(page_title="Review face crops · anime-face-id", layout="wide")
    root = project_root()
    show_messages()
    state = load(root)
    if state is None:
        st.caption(f"Project root: {root}")
        return
    with st.sidebar:
        st.title("Face review")
        # Option labels must not change between runs (a selectbox remembers its choice by
        # label), so the counts go in a table rather than into the labels.
        name = st.selectbox("Character", state.names, key="character")
        view = st.radio("Task", VIEWS, key="view")
        st.caption(f"Project: {root}")
        st.caption(f"Decisions: {layout.DECISIONS.as_posix()} (saved on every click)")
        with st.expander("Progress of every character"):
            st.dataframe(progress_table(state), hide_index=True)
        if state.warnings:
            with st.expander(f"{len(state.warnings)} warning(s)"):
                for warning in state.warnings:
                    st.text(warning)  # plain text: paths and names are not Markdown
    st.header(literal(name))
    if view == "Face crops":
        crops_view(root, state, name)
    elif view == "One by one":
        one_by_one_view(root, state, name)
    else:
        boxes_view(root, state, name)


main()
