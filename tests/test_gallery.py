"""The gallery: exact search against brute force, the IVF index's recall against exact
search, threshold calibration, saving and loading, stale-gallery detection, and adding a
character by rebuilding the gallery without training."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anime_face_id import layout
from anime_face_id.calibration import (
    UNCALIBRATED_THRESHOLD,
    Calibration,
    calibrate,
    calibration_scores,
)
from anime_face_id.config import IdentifyConfig, parse_params
from anime_face_id.embedding_store import embedder_fingerprint
from anime_face_id.fileio import read_csv, write_csv
from anime_face_id.gallery import (
    GALLERY,
    Gallery,
    GalleryError,
    StaleGallery,
    build_gallery,
    load_gallery,
    rebuild_gallery,
    save_gallery,
)
from anime_face_id.identify import load_identifier
from anime_face_id.search_index import ExactIndex, IvfIndex, make_index, top_k, unit_rows
from anime_face_id.verification import eer_threshold
from tests.support.synthetic import DESIGNS, drawn_face
from tests.test_identify import NAMES, make_untrained_project, params_for


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    vectors = rng.normal(size=(n, d)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def clustered(rng: np.random.Generator, centres: np.ndarray, n: int, noise: float) -> np.ndarray:
    """Unit vectors around ``centres`` (the structure real embeddings have: one cluster
    per character)."""
    points = centres[rng.integers(0, len(centres), n)]
    points = points + rng.normal(scale=noise, size=points.shape)
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


# --------------------------------------------------------------------- search


def test_exact_search_matches_brute_force_ranking():
    rng = np.random.default_rng(0)
    items, queries = unit(rng, 500, 16), unit(rng, 40, 16)
    indices, similarities = ExactIndex(items).search(queries, 10)
    brute = queries @ items.T
    expected = np.argsort(-brute, axis=1, kind="stable")[:, :10]
    assert indices.shape == (40, 10)
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(similarities, np.take_along_axis(brute, expected, 1), atol=1e-6)
    assert np.all(np.diff(similarities, axis=1) <= 0)  # best first


def test_exact_search_with_k_beyond_the_gallery_returns_every_item_and_breaks_ties_by_order():
    items = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], np.float32)
    indices, similarities = ExactIndex(items).search(np.array([[1.0, 0.0]]), 10)
    assert indices.tolist() == [[0, 2, 1]]
    np.testing.assert_allclose(similarities, [[1.0, 1.0, 0.0]], atol=1e-6)
    chosen, values = top_k(np.array([[0.2, 0.9, 0.9, 0.1]]), 2)
    assert chosen.tolist() == [[1, 2]] and values[0].tolist() == pytest.approx([0.9, 0.9])


def recall_at(approximate: np.ndarray, exact: np.ndarray) -> float:
    found = sum(len(set(a) & set(e)) for a, e in zip(approximate, exact, strict=True))
    return found / exact.size


def test_ivf_index_recall_against_exact_search():
    rng = np.random.default_rng(1)
    centres = unit(rng, 60, 32)
    items, queries = clustered(rng, centres, 6000, 0.12), clustered(rng, centres, 200, 0.12)
    exact, _ = ExactIndex(items).search(queries, 10)
    recalls = {}
    for probes in (1, 8):
        index = IvfIndex(items, lists=80, probes=probes, seed=0)
        approximate, similarities = index.search(queries, 10)
        recalls[probes] = recall_at(approximate, exact)
        # the similarities reported are the true ones of the items returned
        true = np.take_along_axis(queries @ items.T, approximate, axis=1)
        np.testing.assert_allclose(similarities, true, atol=1e-5)
    assert recalls[8] >= 0.97
    assert recalls[1] < recalls[8]  # approximate: one list alone misses neighbours
    # the lists partition the gallery, and a probe scans only a small part of it
    assert sum(len(m) for m in index.members) == len(items)
    assert max(len(m) for m in index.members) < len(items) / 20


def test_ivf_index_probing_every_list_is_exact():
    rng = np.random.default_rng(2)
    items, queries = clustered(rng, unit(rng, 10, 16), 800, 0.2), unit(rng, 30, 16)
    exact, exact_sims = ExactIndex(items).search(queries, 7)
    everything = IvfIndex(items, lists=12, probes=12, seed=3)
    found, sims = everything.search(queries, 7)
    np.testing.assert_allclose(sims, exact_sims, atol=1e-6)
    assert recall_at(found, exact) == 1.0


def test_ivf_pads_when_the_probed_lists_hold_fewer_than_k_items():
    rng = np.random.default_rng(4)
    items = clustered(rng, unit(rng, 20, 8), 200, 0.1)
    index = IvfIndex(items, lists=20, probes=1, seed=0)
    indices, similarities = index.search(items[:5], 150)
    assert indices.shape == (5, 150)
    assert (indices == -1).any() and np.isneginf(similarities[indices == -1]).all()
    assert (indices[:, 0] >= 0).all()


def test_auto_index_is_exact_for_small_galleries_and_ivf_for_large_ones():
    rng = np.random.default_rng(5)
    items = unit(rng, 300, 8)
    assert make_index(items, IdentifyConfig()).kind == "exact"
    small_limit = IdentifyConfig(exact_max_items=100, ivf_lists=10, ivf_probes=2)
    index = make_index(items, small_limit)
    assert index.kind == "ivf" and len(index.members) == 10
    assert make_index(items, IdentifyConfig(index="ivf")).kind == "ivf"


# --------------------------------------------------------------------- calibration


def test_eer_threshold_sits_between_genuine_and_impostor_scores():
    genuine = np.array([0.9, 0.85, 0.8, 0.75, 0.4])
    impostor = np.array([0.3, 0.35, 0.5, 0.6, 0.78])
    threshold, far, frr = eer_threshold(genuine, impostor)
    # 0.75 is the lowest score with equal rates, 0.6 the next lower: any threshold in
    # (0.6, 0.75] gives them, and the middle is taken
    assert threshold == pytest.approx(0.675)
    assert far == pytest.approx(0.2) and frr == pytest.approx(0.2)
    assert (impostor >= threshold).mean() == pytest.approx(far)
    assert (genuine < threshold).mean() == pytest.approx(frr)
    separable, far, frr = eer_threshold(np.array([0.9, 0.8]), np.array([0.1, 0.2]))
    assert separable == pytest.approx(0.5) and far == frr == 0.0  # halfway across the gap


def test_calibration_scores_are_own_character_versus_best_other_and_held_out():
    # two characters along the axes; a val image of each, and one held-out "unknown"
    gallery = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    labels = np.array([0, 1])
    val = np.array([[0.8, 0.6], [0.6, 0.8]], np.float32)
    holdout = np.array([[0.7071, 0.7071]], np.float32)
    genuine, impostor = calibration_scores(gallery, labels, 2, val, labels, holdout)
    np.testing.assert_allclose(sorted(genuine), [0.8, 0.8], atol=1e-4)
    np.testing.assert_allclose(sorted(impostor), [0.6, 0.6, 0.7071], atol=1e-4)


def test_calibration_is_configured_or_uncalibrated_when_it_cannot_be_measured():
    genuine, impostor = np.array([0.9, 0.8]), np.array([0.2, 0.85])
    chosen = calibrate(genuine, impostor, configured=0.5)
    assert chosen.method == "configured" and chosen.threshold == 0.5
    assert chosen.false_accept == 0.5 and chosen.false_reject == 0.0
    nothing = calibrate(genuine, np.zeros(0), configured=None)
    assert nothing.method == "uncalibrated" and nothing.threshold == UNCALIBRATED_THRESHOLD
    assert "package.threshold" in nothing.note


def test_a_calibration_that_separates_nothing_keeps_its_threshold_but_warns():
    """Identical embeddings: genuine and impostor scores are all 1.0, the EER point accepts
    every unknown face (EER 0.5), which must not read as a normal calibration."""
    rows_of = {
        "gallery": [{"character": c, "path": f"{c}{i}"} for c in "AB" for i in range(3)],
        "val": [{"character": c, "path": f"v{c}"} for c in "AB"],
    }
    same = np.array([0.6, 0.8, 0.0])
    vectors = {row["path"]: same for rows in rows_of.values() for row in rows}
    from anime_face_id.gallery import GalleryRows, describe

    rows = GalleryRows(rows_of["gallery"], rows_of["gallery"], rows_of["val"], [])
    gallery = build_gallery(rows, vectors, "f" * 64, None, {"source": "train"})
    calibration = gallery.calibration
    assert calibration.method == "val_eer" and calibration.false_accept == 1.0
    assert gallery.threshold == pytest.approx(1.0, abs=1e-6)
    assert "do not separate known from unknown (EER 0.50)" in calibration.note
    assert describe(gallery)["calibration"]["note"] == calibration.note  # package.json
    configured = calibrate(np.ones(3), np.ones(3), configured=0.5)
    assert "do not separate" in configured.note
    assert calibrate(np.array([0.9, 0.8]), np.array([0.1, 0.2]), None).note == ""


def test_gallery_info_says_when_false_accept_was_measured_on_trained_characters_only(tmp_path):
    """Without held-out characters every impostor is a trained character's face, and
    ``gallery info`` says that unseen characters are named more often than false_accept
    says; with them it counts their faces and says nothing more."""
    from anime_face_id.gallery import GalleryRows, describe

    rng = np.random.default_rng(0)
    centres = unit(rng, 4, 8)
    rows_of = {
        "gallery": [{"character": c, "path": f"g{c}{i}"} for c in "AB" for i in range(4)],
        "val": [{"character": c, "path": f"v{c}{i}"} for c in "AB" for i in range(2)],
        "holdout": [{"character": c, "path": f"h{c}{i}"} for c in "CD" for i in range(3)],
    }
    vectors = {
        row["path"]: clustered(rng, centres["ABCD".index(row["character"])][None], 1, 0.3)[0]
        for rows in rows_of.values()
        for row in rows
    }
    trained_only = build_gallery(
        GalleryRows(rows_of["gallery"], rows_of["gallery"], rows_of["val"], []), vectors, "f" * 64
    )
    assert trained_only.calibration.held_out_impostors == 0
    caveat = describe(trained_only)["unseen_characters"]
    assert f"false_accept ({trained_only.calibration.false_accept:.3f})" in caveat
    assert "never trained on" in caveat and "split.holdout_characters" in caveat

    rows = GalleryRows(rows_of["gallery"], rows_of["gallery"], rows_of["val"], rows_of["holdout"])
    with_held_out = build_gallery(rows, vectors, "f" * 64)
    assert with_held_out.calibration.held_out_impostors == 6
    assert (
        with_held_out.calibration.impostor == 4 + 6
    )  # one best other per val face, and each held-out face
    assert describe(with_held_out)["unseen_characters"] is None
    save_gallery(with_held_out, tmp_path / "gallery.npz")
    assert load_gallery(tmp_path / "gallery.npz").calibration.held_out_impostors == 6


def test_calibration_refuses_non_finite_embeddings_instead_of_dropping_their_scores():
    gallery = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    val = np.array([[np.nan, 0.6], [0.6, 0.8]], np.float32)
    with pytest.raises(ValueError, match="finite"):
        calibration_scores(gallery, np.array([0, 1]), 2, val, np.array([0, 1]), val[:0])


# --------------------------------------------------------------------- persistence


def small_gallery(embedder: str = "a" * 64) -> Gallery:
    rng = np.random.default_rng(6)
    return Gallery(
        embeddings=unit(rng, 6, 4),
        labels=np.array([0, 0, 1, 1, 2, 2]),
        class_names=["Ａｋａｎｅ", "Bob", "Émile"],  # non-ASCII names survive the round trip
        paths=[f"data/faces/x/{i}.png" for i in range(6)],
        embedder=embedder,
        calibration=Calibration(0.42, "val_eer", 10, 20, 0.1, 0.1),
        meta={"source": "train"},
    )


def test_gallery_round_trip_without_pickle(tmp_path):
    original = small_gallery()
    save_gallery(original, tmp_path / "g.npz")
    loaded = load_gallery(tmp_path / "g.npz")
    np.testing.assert_allclose(loaded.embeddings, original.embeddings, atol=1e-6)
    assert loaded.labels.tolist() == original.labels.tolist()
    assert loaded.class_names == original.class_names and loaded.paths == original.paths
    assert loaded.calibration == original.calibration and loaded.threshold == 0.42
    assert loaded.character_of(4) == "Émile"
    with np.load(tmp_path / "g.npz", allow_pickle=False) as data:  # no object arrays
        assert all(data[name].dtype != object for name in data.files)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_gallery_with_non_finite_embeddings_is_never_written(tmp_path, bad):
    """load_gallery refuses such a file, so saving or building one stops with the cause."""
    gallery = small_gallery()
    gallery.embeddings[2, 1] = bad
    with pytest.raises(GalleryError, match=r"not finite numbers \(NaN or inf\).*train\.lr"):
        save_gallery(gallery, tmp_path / "g.npz")
    assert list(tmp_path.iterdir()) == []

    from anime_face_id.gallery import GalleryRows

    rows = [{"character": c, "path": f"{c}{i}"} for c in "AB" for i in range(2)]
    vectors = {row["path"]: np.array([1.0, 0.0]) for row in rows}
    vectors["B1"] = np.array([bad, 0.0])
    with pytest.raises(GalleryError, match=r"non-finite vectors .* 1 image\(s\) \(first: B1\)"):
        build_gallery(GalleryRows(rows, rows, rows, []), vectors, "f" * 64)


def test_missing_or_damaged_gallery_files_are_gallery_errors(tmp_path):
    with pytest.raises(GalleryError, match="gallery rebuild"):
        load_gallery(tmp_path / "absent.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(GalleryError, match="not a readable gallery"):
        load_gallery(tmp_path / "junk.npz")


def _rewritten(source: Path, target: Path, change) -> Path:
    """``source``'s arrays with ``change(arrays, meta)`` applied, saved as ``target``."""
    with np.load(source, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    stored = arrays["meta"]
    meta = json.loads(str(stored))
    change(arrays, meta)
    if arrays["meta"] is stored:  # not replaced by the change itself
        arrays["meta"] = np.array(json.dumps(meta))
    np.savez(target, **arrays)
    return target


def _set_threshold(value):
    return lambda arrays, meta: meta["calibration"].update(threshold=value)


DAMAGE = {
    "empty file": None,
    "no embeddings": lambda arrays, meta: arrays.pop("embeddings"),
    "no embedder": lambda arrays, meta: meta.pop("embedder"),
    "1-D embeddings": lambda arrays, meta: arrays.update(embeddings=np.ones(6, np.float32)),
    "NaN embeddings": lambda arrays, meta: arrays["embeddings"].__setitem__((0, 0), np.nan),
    "text labels": lambda arrays, meta: arrays.update(labels=np.array(["a"] * 6)),
    "threshold a word": _set_threshold("high"),
    "threshold NaN": _set_threshold(float("nan")),
    "threshold beyond 1": _set_threshold(3.0),
    "no calibration": lambda arrays, meta: meta.pop("calibration"),
    "held-out impostors a word": lambda arrays, meta: meta["calibration"].update(
        held_out_impostors="many"
    ),
    "trained characters a number": lambda arrays, meta: meta.update(trained_characters=5),
    "metadata a list": lambda arrays, meta: arrays.update(meta=np.array("[]")),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_gallery_is_a_gallery_error_not_a_crash(tmp_path, damage):
    source = tmp_path / "good.npz"
    save_gallery(small_gallery(), source)
    target = tmp_path / "damaged.npz"
    if DAMAGE[damage] is None:
        target.write_bytes(b"")
    else:
        _rewritten(source, target, DAMAGE[damage])
    with pytest.raises(GalleryError, match=r"not a readable gallery.*rebuild it"):
        load_gallery(target)


def test_a_gallery_without_images_is_refused_not_answered_with_minus_infinity(tmp_path):
    def emptied(arrays, meta):
        arrays.update(
            embeddings=arrays["embeddings"][:0],
            labels=arrays["labels"][:0],
            paths=arrays["paths"][:0],
        )

    source = tmp_path / "good.npz"
    save_gallery(small_gallery(), source)
    empty = _rewritten(source, tmp_path / "empty.npz", emptied)
    with pytest.raises(GalleryError, match="holds no images, so no face could be named"):
        load_gallery(empty)


def test_a_gallery_from_another_embedder_is_stale():
    gallery = small_gallery(embedder="1" * 64)
    gallery.check_embedder("1" * 64)  # same embedder: fine
    with pytest.raises(StaleGallery, match=r"another embedder.*gallery rebuild"):
        gallery.check_embedder("2" * 64)


# --------------------------------------------------------------------- building


def test_build_gallery_leaves_out_unembedded_rows_and_calibrates_on_val():
    rows_of = {
        "gallery": [{"character": c, "path": f"{c}{i}"} for c in "AB" for i in range(3)],
        "val": [{"character": c, "path": f"v{c}"} for c in "AB"],
    }
    rng = np.random.default_rng(7)
    centres = {"A": np.array([1.0, 0.0, 0.0]), "B": np.array([0.0, 1.0, 0.0])}
    vectors = {
        row["path"]: centres[row["character"]] + rng.normal(scale=0.05, size=3)
        for rows in rows_of.values()
        for row in rows
    }
    del vectors["A2"]  # e.g. an unreadable image
    from anime_face_id.gallery import GalleryRows

    rows = GalleryRows(rows_of["gallery"], rows_of["gallery"], rows_of["val"], [])
    gallery = build_gallery(rows, vectors, "f" * 64, None, {"source": "train"})
    assert len(gallery) == 5 and "A2" not in gallery.paths
    assert gallery.class_names == ["A", "B"]
    assert gallery.calibration.method == "val_eer"
    assert gallery.calibration.genuine == 2 and gallery.calibration.impostor == 2
    # genuine scores are ~1, impostor ~0: the threshold separates them
    assert 0.0 < gallery.threshold <= 1.0


def test_a_face_filed_under_the_wrong_character_is_left_out_listed_and_not_searched():
    """B's face filed as A: left out of the gallery and of the gallery calibration
    searches, listed with the character it looks like and its nearest gallery faces; with
    the option off, every face stays."""
    from anime_face_id.gallery import GalleryRows

    rng = np.random.default_rng(3)
    centres = {"A": np.array([1.0, 0.0, 0.0]), "B": np.array([0.0, 1.0, 0.0])}
    rows = [{"character": c, "path": f"{c}{i}"} for c in "AB" for i in range(5)]
    val = [{"character": c, "path": f"v{c}{i}"} for c in "AB" for i in range(2)]
    vectors = {
        row["path"]: centres[row["character"]] + rng.normal(scale=0.05, size=3)
        for row in rows + val
    }
    vectors["A4"] = centres["B"] + rng.normal(scale=0.05, size=3)  # review let it through
    both = GalleryRows(rows, rows, val, [])

    kept = build_gallery(both, vectors, "f" * 64, leave_out_misfiled=True)
    assert "A4" not in kept.paths and len(kept) == 9
    [face] = kept.meta["left_out_misfiled"]
    assert (face["path"], face["character"], face["looks_like"]) == ("A4", "A", "B")
    assert [n["character"] for n in face["nearest"]] == ["B"] * 5
    assert face["nearest"][0]["similarity"] >= face["nearest"][-1]["similarity"] > 0.9
    # the misfiled face no longer answers the val faces of B as "A" in calibration
    everything = build_gallery(both, vectors, "f" * 64)
    assert len(everything) == 10 and everything.meta["left_out_misfiled"] == []
    assert kept.calibration.threshold != everything.calibration.threshold


def test_every_misfiled_face_is_listed_and_the_first_with_their_nearest_faces():
    from anime_face_id.gallery import NEAREST_LISTED, GalleryRows

    rng = np.random.default_rng(4)
    many = NEAREST_LISTED + 10
    centres = {"A": np.array([1.0, 0.0, 0.0]), "B": np.array([0.0, 1.0, 0.0])}
    rows = [{"character": c, "path": f"{c}{i}"} for c in "AB" for i in range(3 * many)]
    vectors = {
        row["path"]: centres[row["character"]] + rng.normal(scale=0.05, size=3) for row in rows
    }
    for i in range(many):  # B's faces filed as A
        vectors[f"A{i}"] = centres["B"] + rng.normal(scale=0.05, size=3)
    gallery = build_gallery(GalleryRows(rows, rows, [], []), vectors, "f" * 64, 0.5, None, True)
    listed = gallery.meta["left_out_misfiled"]
    assert sorted(face["path"] for face in listed) == sorted(f"A{i}" for i in range(many))
    assert sum("nearest" in face for face in listed) == NEAREST_LISTED
    # the most telling first: those the nearest faces are listed for, and the picture shows
    margins = [face["margin"] for face in listed]
    assert margins == sorted(margins, reverse=True) and margins[-1] > 0
    assert all("nearest" in face for face in listed[:NEAREST_LISTED])


def test_the_face_most_like_another_character_is_listed_first():
    from anime_face_id.gallery import GalleryRows

    centres = {"A": np.array([1.0, 0.0, 0.0]), "B": np.array([0.0, 1.0, 0.0])}
    rows = [{"character": c, "path": f"{c}{i}"} for c in "AB" for i in range(6)]
    vectors = {row["path"]: centres[row["character"]] for row in rows}
    vectors["A1"] = np.array([0.45, 0.55, 0.0])  # barely nearer B
    vectors["A2"] = np.array([0.0, 1.0, 0.0])  # B's face itself
    gallery = build_gallery(GalleryRows(rows, rows, [], []), vectors, "f" * 64, 0.5, None, True)
    listed = gallery.meta["left_out_misfiled"]
    assert [face["path"] for face in listed] == ["A2", "A1"]
    assert listed[0]["margin"] > listed[1]["margin"] > 0


def add_character(root: Path, name: str, count: int = 4) -> list[str]:
    """A new character's crops as the data stages would leave them (review + split done)."""
    rng = np.random.default_rng(11)
    slug = name.lower().replace(" ", "_")
    rows = read_csv(root / layout.split_csv("train"))
    paths = []
    for index in range(count):
        path = f"data/faces/{slug}/new_{index}.png"
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(drawn_face(rng, DESIGNS[name])).save(root / path)
        rows.append(
            {"character": name, "slug": slug, "path": path, "source": path, "cluster": path}
        )
        paths.append(path)
    write_csv(root / layout.split_csv("train"), layout.SPLIT_COLUMNS, rows)
    return paths


def test_rebuilding_adds_a_character_without_touching_the_model(tmp_path):
    root = make_untrained_project(tmp_path / "project")
    params = params_for(NAMES)
    checkpoint = root / "models" / "embedder.pt"
    model_hash = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    before, _ = rebuild_gallery(root, params, checkpoint, root / GALLERY)
    assert "Shiro White" not in before.class_names

    new = add_character(root, "Shiro White")
    after, skipped = rebuild_gallery(root, params, checkpoint, root / GALLERY)
    assert skipped == {}
    assert after.class_names == sorted([*before.class_names, "Shiro White"])
    assert len(after) == len(before) + len(new)
    assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() == model_hash  # no training
    assert after.meta["trained_characters"] == before.class_names

    # and the new character is now named
    identifier = load_identifier(root, params)
    result = identifier.identify_file(root / new[1])
    assert result.faces[0].character == "Shiro White"
    assert result.faces[0].score == pytest.approx(1.0, abs=1e-4)


def test_the_gallery_reuses_stored_embeddings_while_network_and_crop_are_unchanged(tmp_path):
    """What evaluate stored is not embedded again; a re-cut crop, another network or a
    damaged store is (and never fails the rebuild)."""
    from anime_face_id.checkpoint import load_checkpoint
    from anime_face_id.embed import embed_paths
    from anime_face_id.embedding_store import EMBEDDINGS, save_embeddings

    root = make_untrained_project(tmp_path / "project")
    params = params_for(NAMES)
    checkpoint = root / "models" / "embedder.pt"
    fresh, _ = rebuild_gallery(root, params, checkpoint, root / GALLERY)
    computed = fresh.meta["embeddings"]["computed"]
    assert fresh.meta["embeddings"] == {"reused": 0, "computed": computed} and computed > len(fresh)

    loaded = load_checkpoint(checkpoint, "cpu")
    crops = sorted(p.relative_to(root).as_posix() for p in (root / "data/faces").rglob("*.png"))
    vectors = embed_paths(loaded.model, [root / c for c in crops], loaded.image_size).numpy()
    stored = dict(zip(crops, vectors, strict=True))
    save_embeddings(root / EMBEDDINGS, embedder_fingerprint(checkpoint), root, stored)
    reused, _ = rebuild_gallery(root, params, checkpoint, root / GALLERY)
    assert reused.meta["embeddings"] == {"reused": computed, "computed": 0}
    assert reused.paths == fresh.paths
    np.testing.assert_allclose(reused.embeddings, fresh.embeddings, atol=1e-5)
    assert reused.threshold == pytest.approx(fresh.threshold, abs=1e-4)

    recut = root / fresh.paths[0]
    Image.fromarray(drawn_face(np.random.default_rng(5), DESIGNS["Shiro White"])).save(recut)
    again, _ = rebuild_gallery(root, params, checkpoint, root / GALLERY)
    assert again.meta["embeddings"] == {"reused": computed - 1, "computed": 1}

    make_untrained_project(root, seed=1, images=False)  # retrained: another network
    other, _ = rebuild_gallery(root, params, checkpoint, root / GALLERY)
    assert other.meta["embeddings"] == {"reused": 0, "computed": computed}

    (root / EMBEDDINGS).write_bytes(b"PK\x03\x04 not a zip")
    damaged, _ = rebuild_gallery(root, params, checkpoint, root / GALLERY)
    assert damaged.meta["embeddings"] == {"reused": 0, "computed": computed}


def write_store(path: Path, embedder: str, arrays: dict[str, np.ndarray]) -> None:
    """An embeddings store as save_embeddings writes it, with the given (damaged) arrays."""
    from anime_face_id.embedding_store import FORMAT

    meta = json.dumps({"format": FORMAT, "embedder": embedder})
    with path.open("wb") as file:
        np.savez(file, meta=np.array(meta), **arrays)


def test_a_damaged_store_of_this_network_is_embedded_again_not_reused(tmp_path):
    """A store made by this very checkpoint but damaged (rows missing, another width, NaN
    or inf vectors) gives the gallery a fresh embedding of what it cannot vouch for."""
    from anime_face_id.checkpoint import load_checkpoint
    from anime_face_id.embed import embed_paths
    from anime_face_id.embedding_store import EMBEDDINGS
    from anime_face_id.fileio import file_sha256

    root = make_untrained_project(tmp_path / "project")
    params = params_for(NAMES)
    checkpoint = root / "models" / "embedder.pt"
    fresh = load_gallery(root / GALLERY)
    computed = fresh.meta["embeddings"]["computed"]
    loaded = load_checkpoint(checkpoint, "cpu")
    crops = sorted(p.relative_to(root).as_posix() for p in (root / "data/faces").rglob("*.png"))
    matrix = embed_paths(loaded.model, [root / c for c in crops], loaded.image_size).numpy()
    good = {
        "embeddings": matrix,
        "paths": np.array(crops, dtype=np.str_),
        "files": np.array([file_sha256(root / c) for c in crops], dtype=np.str_),
    }
    broken = matrix.copy()
    broken[crops.index(fresh.paths[0])] = np.nan
    broken[crops.index(fresh.paths[1]), 3] = np.inf
    damages = {
        "embeddings shorter than paths": ({"embeddings": matrix[:-1]}, 0),
        "files shorter than paths": ({"files": good["files"][:-1]}, 0),
        "vectors of another width": ({"embeddings": matrix[:, :-1]}, 0),
        "one vector per file, not a matrix": ({"embeddings": matrix[:, 0]}, 0),
        "NaN and inf vectors": ({"embeddings": broken}, computed - 2),
    }
    for damage, (arrays, reusable) in damages.items():
        write_store(root / EMBEDDINGS, embedder_fingerprint(checkpoint), {**good, **arrays})
        gallery, _ = rebuild_gallery(root, params, checkpoint, root / GALLERY)
        expected = {"reused": reusable, "computed": computed - reusable}
        assert gallery.meta["embeddings"] == expected, damage
        saved = load_gallery(root / GALLERY)  # finite, of the network's width
        assert saved.paths == fresh.paths, damage
        np.testing.assert_allclose(saved.embeddings, fresh.embeddings, atol=1e-5, err_msg=damage)


def test_the_identifier_refuses_a_gallery_left_by_another_model(tmp_path):
    root = make_untrained_project(tmp_path / "project")
    params = params_for(NAMES)
    load_identifier(root, params)  # consistent: loads
    make_untrained_project(root, seed=1, images=False)  # "retrained": another checkpoint
    assert (
        embedder_fingerprint(root / "models" / "embedder.pt")
        != load_gallery(root / GALLERY).embedder
    )
    with pytest.raises(StaleGallery, match="gallery rebuild"):
        load_identifier(root, params)


def test_curated_source_takes_every_curated_crop(tmp_path):
    root = make_untrained_project(tmp_path / "project")
    curated = [
        {**row, "status": "accepted", "origin": "detector"}
        for split in ("train", "val", "test")
        for row in read_csv(root / layout.split_csv(split))
    ]
    write_csv(root / layout.CURATED_MANIFEST, layout.CURATED_COLUMNS, curated)
    params = parse_params(
        {
            "characters": [{"name": n} for n in NAMES],
            "crop": {"detector": "none", "size": 64},
            "package": {"gallery_source": "curated", "device": "cpu"},
        }
    )
    gallery, _ = rebuild_gallery(root, params, root / "models" / "embedder.pt", root / GALLERY)
    assert len(gallery) == len(curated) and gallery.meta["source"] == "curated"
    # still calibrated on val against the train split, not against itself
    assert gallery.calibration.method == "val_eer"
    assert gallery.calibration.genuine == len(read_csv(root / layout.split_csv("val")))


# --------------------------------------------------------------------- naming


@pytest.mark.parametrize("seed", range(4))
def test_best_per_character_matches_a_loop_over_characters(seed: int, monkeypatch) -> None:
    """In chunks of queries (memory bounded by chunk x gallery) as in one piece."""
    import anime_face_id.search_index as search_index

    rng = np.random.default_rng(seed)
    queries, items = rng.normal(size=(5, 8)), rng.normal(size=(40, 8))
    labels = rng.integers(0, 9, 40)
    labels[labels == 3] = 2  # character 3 has no items
    similarity = unit_rows(queries) @ unit_rows(items).T
    whole = search_index.best_per_character(queries, items, labels, 9)
    monkeypatch.setattr(search_index, "_CHUNK", 2)
    chunked = search_index.best_per_character(queries, items, labels, 9)
    for row in range(5):
        for label in range(9):
            columns = similarity[row, labels == label]
            expected = columns.max() if len(columns) else -np.inf
            assert whole[row, label] == pytest.approx(expected, abs=1e-6)
            assert chunked[row, label] == pytest.approx(whole[row, label], abs=1e-6)
    empty = search_index.best_per_character(queries[:2], items[:0], labels[:0], 3)
    assert empty.tolist() == [[-np.inf] * 3] * 2


@pytest.mark.parametrize("seed", range(4))
def test_exact_naming_equals_naming_from_every_item_ranked(seed: int) -> None:
    """The vectorised exact path against the neighbour path made exhaustive (the old way:
    every item ranked, a character's score at its first appearance)."""
    from anime_face_id.calibration import Calibration
    from anime_face_id.gallery import Gallery
    from anime_face_id.naming import name_embeddings, name_exactly, name_from_neighbours
    from anime_face_id.search_index import unit_rows

    rng = np.random.default_rng(seed)
    items, classes = 300, 12
    labels = rng.integers(0, classes, items)
    labels[labels == 5] = 4  # a character without items is never a candidate
    gallery = Gallery(
        unit_rows(rng.normal(size=(items, 16))),
        labels,
        [f"character {i}" for i in range(classes)],
        [f"data/faces/{i}.png" for i in range(items)],
        "sha",
        Calibration(0.3, "configured", 0, 0, None, None),
    )
    assert gallery.index.kind == "exact"
    queries = rng.normal(size=(7, 16)).astype(np.float32)
    fast = name_exactly(gallery, queries, top=5, neighbours=6)
    slow = name_from_neighbours(gallery, queries, top=5, neighbours=6, depth=items)
    assert name_embeddings(gallery, queries, 5, 6, search_depth=10) == fast
    for quick, reference in zip(fast, slow, strict=True):
        assert quick.character == reference.character
        assert quick.score == pytest.approx(reference.score, abs=1e-6)
        assert [c.character for c in quick.candidates] == [
            c.character for c in reference.candidates
        ]
        assert "character 5" not in [c.character for c in quick.candidates]
        assert [n.path for n in quick.neighbours] == [n.path for n in reference.neighbours]
        for a, b in zip(quick.neighbours, reference.neighbours, strict=True):
            assert a.similarity == pytest.approx(b.similarity, abs=1e-6)


def test_the_package_stage_leaves_out_a_misnamed_face_and_shows_it(tmp_path_factory, tmp_path):
    """A trained model's package with one training face renamed to another character:
    package.misfiled leave_out keeps it out of models/gallery.npz, lists it in
    metrics/package.json and draws it in plots/gallery_left_out.png; keep leaves the
    gallery whole and the picture says so."""
    import shutil

    from anime_face_id.package import LEFT_OUT_PNG, PACKAGE_METRICS, package_gallery
    from tests.test_identify import params_dict, trained_project

    root = tmp_path / "project"
    shutil.copytree(trained_project(tmp_path_factory), root)
    rows = read_csv(root / layout.split_csv("train"))
    renamed = next(row for row in rows if row["character"] == NAMES[0])
    renamed["character"] = NAMES[1]
    write_csv(root / layout.split_csv("train"), layout.SPLIT_COLUMNS, rows)

    def package(setting: str) -> dict:
        params = parse_params({**params_dict(NAMES), "package": {"misfiled": setting}})
        return package_gallery(root, params, layout.EMBEDDER)

    summary = package("leave_out")
    listed = {face["path"]: face for face in summary["left_out_misfiled"]}
    assert listed[renamed["path"]]["looks_like"] == NAMES[0]
    assert listed[renamed["path"]]["character"] == NAMES[1]
    assert len(listed) <= 2  # the rest of the generated faces look like their names
    assert json.loads((root / PACKAGE_METRICS).read_text())["left_out_misfiled"]
    gallery = load_gallery(root / GALLERY)
    assert renamed["path"] not in gallery.paths and summary["items"] == len(gallery)
    drawn = Image.open(root / LEFT_OUT_PNG)
    assert drawn.height > 200  # a row of faces, not the placeholder's one line

    whole = package("keep")
    assert whole["left_out_misfiled"] == [] and whole["items"] == len(gallery) + len(listed)
    assert renamed["path"] in load_gallery(root / GALLERY).paths
    assert Image.open(root / LEFT_OUT_PNG).height < drawn.height
