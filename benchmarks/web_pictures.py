"""Pictures in, names out: the whole user path on uncropped web pictures, several seeds.

    python benchmarks/web_pictures.py [--raw ../shared/testdata/raw]
                                      [--identities ../shared/testdata/identities]
                                      [--scraped 28] [--per-character 30] [--seeds 0 1 2]
                                      [-S train.epochs=16 ...] [--params params.yaml]
                                      [--workdir DIR] [--json FILE]

``quality.py`` measures the embedder on face crops someone else cut. A user starts from
whole pictures: the crop stage's detector cuts the faces, the embedder is trained on them,
and ``anime-face-id identify`` names new whole pictures. This measures that path, per seed:

1. Each character of ``--raw`` (uncropped illustrations by many artists, one sub-folder per
   character) has its pictures shuffled with the seed: the first ``--scraped`` are what the
   user collected, the rest are new pictures to name later. New pictures within the
   split's near-duplicate distance of a scraped one are counted and reported.
2. The scraped pictures go through the real collect and crop stages with the ``crop``
   section of ``--params`` (this repository's: its default detector). Review is stood in
   for by keeping each picture's surest face (the detector's highest score); a reviewer
   would also drop faces of other characters, so this is, if anything, a little harder
   than the users' data.
3. Those crops and ``--identities``' crops (at most ``--per-character`` per character,
   drawn as ``quality.py`` draws them, detector none: they are crops already) form one
   project; every character is meant to be trained on (``split.holdout_characters`` 0; the
   number actually in the training split is reported). Split, balance, train, evaluate and
   package run as the pipeline runs them, with the recipe of ``--params`` changed only by
   ``-S``, and its ``package`` and ``identify`` sections as they are.
4. The packaged identifier (gallery, calibrated unknown-face threshold, the same detector
   settings as step 2) names every new picture, as ``anime-face-id identify`` does.

Printed per seed and as the mean with the spread: the share of scraped pictures in which
the detector found a face; of the new pictures the share named right (some face is named
as the picture's character), named wrong (a face named as another character, none right),
with only unknown faces, with no face, unreadable; the stricter share whose surest face is
named right; the faces found per new picture; and the evaluate stage's identification
precision@1 on the val crops. ``--json`` keeps every miss (picture, character, the names
given). No ImageNet baseline here: ``quality.py`` gives one on crops.

Cost: one training run of ~25 characters per seed (about 17 min at 45 epochs on a 2-core
CPU). ``-S train.epochs=1 -S train.batches_per_epoch=2`` is a smoke test, not a measurement.
"""

from __future__ import annotations

import argparse
import csv
import logging
import shutil
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere, without installing

from anime_face_id import layout  # noqa: E402
from anime_face_id.collect import collect_all  # noqa: E402
from anime_face_id.config import ConfigError, Params, parse_params  # noqa: E402
from anime_face_id.crop import crop_all  # noqa: E402
from anime_face_id.errors import StageError  # noqa: E402
from anime_face_id.fileio import atomic_write_json  # noqa: E402
from anime_face_id.gallery import GALLERY  # noqa: E402
from anime_face_id.identify import build_identifier  # noqa: E402
from anime_face_id.identify_results import PictureResult  # noqa: E402
from anime_face_id.imaging import load_rgb, phash, phash_distance  # noqa: E402
from anime_face_id.package import package_gallery  # noqa: E402
from anime_face_id.sources.folder import image_files  # noqa: E402
from anime_face_id.split import derived_rng  # noqa: E402
from benchmarks.quality import (  # noqa: E402
    DEFAULT_FOLDER,
    add_recipe_options,
    build_params,
    character_folders,
    int_at_least,
    non_negative_int,
    params_sections,
    prepare_project,
    recipe_from,
    sample_crops,
    train_and_evaluate,
    write_sample,
)

DEFAULT_RAW = REPO.parent / "shared" / "testdata" / "raw"
OUTCOMES = ("named right", "named wrong", "unknown only", "no face", "unreadable")
TOP_FACE = "surest face named right"


def json_key(name: str) -> str:
    """``named right`` -> ``named_right``: the outcome's key among a seed's figures."""
    return name.replace(" ", "_")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", type=Path, default=DEFAULT_RAW)
    parser.add_argument("--identities", type=Path, default=DEFAULT_FOLDER)
    parser.add_argument(
        "--scraped",
        type=int_at_least(1),
        default=28,
        help="pictures per raw character the user collected; the rest are named later",
    )
    parser.add_argument(
        "--per-character",
        type=non_negative_int,
        default=30,
        help="at most this many identity crops per character, drawn with the seed (0: all)",
    )
    add_recipe_options(parser)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--workdir", type=Path, help="keep the projects here (default: temporary)")
    parser.add_argument("--json", type=Path, help="also write every seed's figures here")
    return parser.parse_args(argv)


# --------------------------------------------------------------------- the pictures


def scraped_and_new(
    raw: Path, names: Sequence[str], scraped: int, seed: int
) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """Per character: the pictures the user collected and the new ones, drawn by an RNG
    that depends only on (seed, character)."""
    collected, new = {}, {}
    for name in names:
        pictures = sorted(image_files(raw / name))
        derived_rng(seed, "web-pictures", name).shuffle(pictures)
        if len(pictures) <= scraped:
            raise SystemExit(
                f"{raw / name}: {len(pictures)} pictures, need more than --scraped {scraped}"
            )
        collected[name], new[name] = pictures[:scraped], pictures[scraped:]
    return collected, new


def user_sections(params_file: Path) -> dict[str, dict]:
    """The sections of ``--params`` a user's crop and identify steps run with; the
    detector's files resolved against the params file's folder, as the project does, so
    that the crop step and the identifier load the same ones."""
    sections = params_sections(params_file, ("crop", "package", "identify"))
    for key in ("detector_weights", "cascade"):
        if sections["crop"].get(key):
            sections["crop"][key] = str((params_file.parent / sections["crop"][key]).resolve())
    return sections


def near_duplicates(
    collected: dict[str, list[Path]], new: dict[str, list[Path]], max_distance: int
) -> int:
    """New pictures within ``max_distance`` (pHash bits) of one of their character's
    scraped pictures: naming those would measure memory, not recognition."""
    found = 0
    for name, pictures in new.items():
        scraped = [phash(load_rgb(path)) for path in collected[name]]
        for path in pictures:
            code = phash(load_rgb(path))
            found += any(phash_distance(code, other) <= max_distance for other in scraped)
    return found


def surest_face_per_picture(rows: list[dict]) -> dict[str, list[str]]:
    """Per character, the crop path of each source picture's highest-scoring face, in
    the order of the pictures' sha256: review stood in for."""
    surest: dict[tuple[str, str], dict] = {}
    for row in rows:
        key = (row["character"], row["source_sha256"])
        if key not in surest or float(row["score"]) > float(surest[key]["score"]):
            surest[key] = row
    crops: dict[str, list[str]] = {}
    for (name, _sha), row in sorted(surest.items()):
        crops.setdefault(name, []).append(row["path"])
    return crops


def detected_faces(
    root: Path, pictures: dict[str, list[Path]], crop: dict
) -> tuple[dict[str, list[Path]], dict[str, float]]:
    """The scraped pictures through the collect and crop stages; per character the crop
    of each picture's surest face, and the share of pictures with a face."""
    source = root / "pictures"
    for name, paths in pictures.items():
        (source / name).mkdir(parents=True)
        for path in paths:
            shutil.copy2(path, source / name / path.name)
    params = parse_params(
        {
            "characters": [{"name": name} for name in pictures],
            "collect": {"backend": "folder", "folder": str(source), "limit": 100000},
            "crop": crop,
        },
        "benchmark crop",
    )
    project = root / "project"
    collect_all(project, params)
    crop_all(project, params.crop)
    with (project / layout.FACES_MANIFEST).open(newline="", encoding="utf-8") as handle:
        surest = surest_face_per_picture(list(csv.DictReader(handle)))
    faces = {name: [project / path for path in surest.get(name, [])] for name in pictures}
    face_found_share = {name: len(faces[name]) / len(pictures[name]) for name in pictures}
    return faces, face_found_share


def training_folder(
    destination: Path, identities: Path, per_character: int, seed: int, faces: dict
) -> list[str]:
    """One folder-backend tree: the sampled identity crops and the detected faces."""
    names = character_folders(identities)
    write_sample(identities, sample_crops(identities, names, per_character, seed), destination)
    for name, paths in faces.items():
        (destination / name).mkdir(parents=True)
        for index, path in enumerate(paths):
            shutil.copy2(path, destination / name / f"{index:03d}{path.suffix}")
    return sorted([*names, *faces])


# --------------------------------------------------------------------- naming


def outcome(result: PictureResult, character: str) -> str:
    """Exactly one of OUTCOMES, tried in that order: right wins over a wrong face beside it."""
    if result.status == "error":
        return "unreadable"
    named = {face.character for face in result.faces}
    if character in named:
        return "named right"
    if named - {None}:
        return "named wrong"
    return "unknown only" if result.faces else "no face"


def top_face_right(result: PictureResult, character: str) -> bool:
    """The stricter reading: the face the detector is surest of is named as the character
    (a picture of several people is not right merely because one face is)."""
    if not result.faces:
        return False
    return max(result.faces, key=lambda face: face.detector_score).character == character


def name_new_pictures(
    root: Path, params: Params, new: dict[str, list[Path]]
) -> tuple[dict[str, dict[str, int]], list[dict]]:
    """Per character, how many new pictures ended in each outcome, how many had their
    surest face named right and how many faces were found in all; and every miss."""
    identifier = build_identifier(
        root / layout.EMBEDDER, root / GALLERY, params.crop, params.identify, root
    )
    counts, misses = {}, []
    for character, pictures in new.items():
        results = identifier.identify_files(pictures)
        outcomes = [outcome(result, character) for result in results]
        counts[character] = {
            **{name: outcomes.count(name) for name in OUTCOMES},
            TOP_FACE: sum(top_face_right(result, character) for result in results),
            "faces": sum(len(result.faces) for result in results),
        }
        misses += [
            {
                "character": character,
                "picture": str(path),
                "outcome": found,
                "names": [face.character for face in result.faces],
            }
            for path, result, found in zip(pictures, results, outcomes, strict=True)
            if found != "named right"
        ]
    return counts, misses


def shares_of(counts: dict[str, dict[str, int]]) -> dict[str, float]:
    pictures = sum(sum(c[name] for name in OUTCOMES) for c in counts.values())
    total = {key: sum(c[key] for c in counts.values()) for key in (*OUTCOMES, TOP_FACE, "faces")}
    return {
        "new_pictures": pictures,
        **{json_key(name): total[name] / pictures for name in (*OUTCOMES, TOP_FACE)},
        "faces_per_picture": total["faces"] / pictures,
    }


# --------------------------------------------------------------------- one seed


def trained_characters(root: Path) -> int:
    with (root / layout.SPLITS_DIR / "train.csv").open(newline="", encoding="utf-8") as handle:
        return len({row["character"] for row in csv.DictReader(handle)})


def run_seed(
    workdir: Path, args: argparse.Namespace, recipe: dict, user: dict[str, dict], seed: int
) -> dict:
    raw_names = character_folders(args.raw)
    collected, new = scraped_and_new(args.raw, raw_names, args.scraped, seed)
    home = workdir / f"seed-{seed}"
    print(f"--- seed {seed}: cropping {sum(map(len, collected.values()))} scraped pictures")
    faces, face_found_share = detected_faces(home / "scraped", collected, user["crop"])
    source = home / "crops"
    names = training_folder(source, args.identities, args.per_character, seed, faces)
    params = build_params(recipe, source, names, holdout=0, seed=seed, others=user)
    project = home / "project"
    prepare_project(project, params, params.split.seed, (), names)
    report = train_and_evaluate(project, params)
    package_gallery(project, params, layout.EMBEDDER)
    counts, misses = name_new_pictures(project, params, new)
    result = {
        "seed": seed,
        "characters": trained_characters(project),
        "near_duplicates": near_duplicates(collected, new, params.split.phash_distance),
        "scraped_with_face": statistics.fmean(face_found_share.values()),
        "scraped_with_face_per_character": face_found_share,
        "new_picture_outcomes": counts,
        **shares_of(counts),
        "misses": misses,
        "identification_precision_at_1": report["val"]["identification"]["precision_at_1"],
        "seconds_per_epoch": report["seconds_per_epoch"],
    }
    print_seed(result)
    return result


def print_seed(result: dict) -> None:
    print(
        f"seed {result['seed']}: face found in {result['scraped_with_face']:.3f} of the "
        f"scraped pictures; of {result['new_pictures']} new pictures "
        + ", ".join(f"{name} {result[json_key(name)]:.3f}" for name in (*OUTCOMES, TOP_FACE))
        + f"; val identification P@1 {result['identification_precision_at_1']:.3f}",
        flush=True,
    )
    for miss in result["misses"]:
        names = ", ".join(str(name) for name in miss["names"]) or "no face"
        print(f"  {miss['outcome']}: {miss['picture']} ({miss['character']}) -> {names}")
    if result["near_duplicates"]:
        print(f"  {result['near_duplicates']} new picture(s) near-duplicate a scraped one")


ROWS = (
    ("scraped_with_face", "scraped pictures with a face"),
    *((json_key(name), f"new pictures {name}") for name in (*OUTCOMES, TOP_FACE)),
    ("faces_per_picture", "faces found per new picture"),
    ("identification_precision_at_1", "val identification precision@1 (crops)"),
    ("seconds_per_epoch", "seconds per epoch"),
)


def print_summary(results: list[dict]) -> None:
    print(f"\n{results[0]['characters']} characters trained; seeds {[r['seed'] for r in results]}")
    header = f"{'':42} {'mean':>7} {'± std':>7} {'min-max':>13}"
    print(header + "\n" + "-" * len(header))
    for key, label in ROWS:
        values = [result[key] for result in results]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        spread = f"{min(values):.3f}-{max(values):.3f}"
        print(f"{label:42} {statistics.fmean(values):7.3f} {std:7.3f} {spread:>13}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # training's progress
    clash = sorted(set(character_folders(args.identities)) & set(character_folders(args.raw)))
    if clash:
        raise SystemExit(f"characters both in --identities and --raw: {', '.join(clash)}")
    if len(set(args.seeds)) < len(args.seeds):
        raise SystemExit(f"--seeds {' '.join(map(str, args.seeds))}: a seed given twice")
    used = [args.workdir / f"seed-{seed}" for seed in args.seeds if args.workdir]
    if any(folder.exists() for folder in used):
        raise SystemExit(f"{args.workdir} holds earlier runs of these seeds: use another --workdir")
    try:
        recipe = recipe_from(args.params, args.overrides)
        user = user_sections(args.params)
        # refused early: the params every seed builds
        build_params(recipe, args.identities, ["a", "b"], holdout=0, seed=0, others=user)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="anime-face-id-web-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        results = [run_seed(workdir, args, recipe, user, seed) for seed in args.seeds]
    except StageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print_summary(results)
    if args.json:
        atomic_write_json(args.json, {"overrides": args.overrides, "seeds": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
