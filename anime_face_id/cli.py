"""The `anime-face-id` console script.

  anime-face-id check [--fill]             validate params.yaml, list characters and slugs
                                           (--fill: add the keys DVC needs at their defaults)
  anime-face-id identify PICTURE... [--json] [--top N]
                                           name the characters in pictures
  anime-face-id gallery rebuild            re-embed the gallery from curated crops
                                           (no training), recalibrate the threshold
  anime-face-id gallery info               what the gallery holds

Exit status of `identify`: 0 when every picture could be read (with or without faces),
1 when at least one could not (each such picture gets its own message; the others are
still answered), 2 when nothing could run (no model, stale gallery, bad params.yaml).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import unicodedata
from collections.abc import Sequence
from pathlib import Path

from anime_face_id.config import ConfigError, load_params
from anime_face_id.errors import StageError
from anime_face_id.faces.cascade import CascadeError

EXIT_OK, EXIT_SOME_FAILED, EXIT_UNUSABLE = 0, 1, 2


def check_params(args: argparse.Namespace) -> int:
    from anime_face_id.params_fill import dvc_missing_keys, missing_message

    params = load_params(args.params)
    if args.fill:
        fill_params(Path(args.params))
    missing = dvc_missing_keys(Path(args.params))
    if missing:
        print(f"error: {missing_message(missing, args.params)}", file=sys.stderr)
        return EXIT_UNUSABLE
    slugs = params.slugs
    print(
        f"{args.params}: OK, {len(params.characters)} characters, backend {params.collect.backend}"
    )
    for character in params.characters:
        name, query = shown(character.name), shown(character.search_query)
        print(f"  {slugs[character.name]:<32} {name}  (query: {query})")
    return EXIT_OK


def fill_params(path: Path) -> None:
    """Write the keys dvc.yaml reads and ``path`` lacks into it, at their defaults."""
    from anime_face_id.config import read_params_text
    from anime_face_id.fileio import atomic_write_bytes
    from anime_face_id.params_fill import PARAMS_FILE, dvc_param_keys, fill_text

    if path.name != PARAMS_FILE:
        raise ConfigError(f"--fill: DVC reads {PARAMS_FILE}, not {path.name}: nothing to fill")
    try:
        filled = fill_text(read_params_text(path), dvc_param_keys(path.parent / "dvc.yaml"))
    except ValueError as error:
        raise ConfigError(f"{path}: {error}") from None
    if not filled.added:
        return
    atomic_write_bytes(path, filled.text.encode("utf-8"))
    how = "written out again, without its comments" if filled.rewritten else "the rest kept"
    print(f"{path}: added {', '.join(filled.added)} at their defaults ({how})")


# --------------------------------------------------------------------- identify


def _in_root(root: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else root / path


def shown(text: str) -> str:
    """``text`` safe to print on a terminal: control and format characters (newlines,
    escape sequences, bidirectional overrides) in a file or character name become visible
    escapes, so a name cannot forge output lines or move the cursor."""
    return "".join(_escaped(char) for char in text)


def readable_name(argument: str) -> str:
    """A picture's name as given, printable and JSON-safe: bytes of a name that is not
    UTF-8 (which Python keeps as lone surrogates, unprintable on a UTF-8 terminal) become
    ``\\xNN`` text."""
    return argument.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _escaped(char: str) -> str:
    if unicodedata.category(char) not in ("Cc", "Cf", "Zl", "Zp", "Cs"):
        return char
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte of a file name that is not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def face_lines(result) -> list[str]:
    """Human-readable lines for one picture's result."""
    picture = shown(result.picture)
    if result.status == "error":
        return [f"{picture}: error: {shown(result.error or '')}"]
    if result.status == "no_face":
        return [f"{picture}: no face detected ({result.width}x{result.height})"]
    count = len(result.faces)
    lines = [f"{picture}: {count} face{'s' if count != 1 else ''}"]
    for number, face in enumerate(result.faces, start=1):
        x, y, w, h = face.box
        others = ", ".join(f"{shown(c.character)} {c.score:.3f}" for c in face.candidates[1:])
        best = f"{shown(face.label)} {face.score:.3f}"
        if not face.known and face.candidates:
            closest = shown(face.candidates[0].character)
            best = f"unknown (closest: {closest} {face.score:.3f})"
        lines.append(
            f"  face {number} at x={x} y={y} w={w} h={h}: {best}"
            + (f"  | next: {others}" if others else "")
        )
    return lines


def identify_pictures(args: argparse.Namespace) -> int:
    from anime_face_id import identify

    root = Path(args.root)
    params = load_params(_in_root(root, args.params))
    # load_identifier puts relative paths under root itself
    identifier = identify.load_identifier(root, params, args.model, args.gallery, args.device)
    options = {"top": args.top, "neighbours": args.neighbours}
    results = []
    # a few pictures at a time: their faces share forward passes, and answers still
    # appear as the work goes on
    step = identify.PICTURES_PER_PASS
    for start in range(0, len(args.pictures), step):
        chunk = args.pictures[start : start + step]
        names = [readable_name(p) for p in chunk]
        answered = identifier.identify_files([Path(p) for p in chunk], names, **options)
        results += answered
        if not args.json:
            for result in answered:
                stream = sys.stderr if result.status == "error" else sys.stdout
                print("\n".join(face_lines(result)), file=stream, flush=True)
    if args.json:
        print(json.dumps(identify.report(identifier, results), indent=2, ensure_ascii=False))
    elif results:
        threshold = identifier.gallery.threshold
        print(
            f"(unknown below similarity {threshold:.3f}, "
            f"{identifier.gallery.calibration.method}; {len(identifier.gallery.class_names)} "
            "characters in the gallery)"
        )
    return EXIT_SOME_FAILED if any(r.status == "error" for r in results) else EXIT_OK


# --------------------------------------------------------------------- gallery


def rebuild(args: argparse.Namespace) -> int:
    from anime_face_id.gallery import describe, rebuild_gallery

    root = Path(args.root)
    params = load_params(_in_root(root, args.params))
    destination = _in_root(root, args.gallery)
    checkpoint = _in_root(root, args.model)
    with contextlib.ExitStack() as stack:
        embedder = None  # embed here, unless compute.runner says a Dask cluster
        if params.compute.runner == "dask":
            from anime_face_id.chunked_embedding import dask_embedder

            device = args.device or params.package.device
            embedder = stack.enter_context(
                dask_embedder(params.compute, root, checkpoint, params.package.batch_size, device)
            )
        gallery, skipped = rebuild_gallery(
            root, params, checkpoint, destination, args.source, args.device, embedder
        )
    summary = describe(gallery)
    if skipped:  # each with its reason in the log lines above
        print(f"{len(skipped)} images left out (unreadable; see above)", file=sys.stderr)
    print(
        f"{destination}: {summary['items']} images of {summary['characters']} characters "
        f"({summary['source']}), threshold {summary['threshold']:.3f} "
        f"({summary['calibration']['method']})"
    )
    if summary["calibration"]["note"]:  # e.g. a threshold that cannot separate anything
        print(f"threshold: {summary['calibration']['note']}", file=sys.stderr)
    if summary["not_trained_on"]:
        print(f"not seen in training: {', '.join(summary['not_trained_on'])}")
    if summary["left_out_misfiled"]:  # package.misfiled: leave_out
        print(
            f"left out {len(summary['left_out_misfiled'])} faces that look like another "
            "character than their name (`anime-face-id gallery info` lists them)"
        )
    return EXIT_OK


def info(args: argparse.Namespace) -> int:
    from anime_face_id.embedding_store import embedder_fingerprint
    from anime_face_id.gallery import describe, load_gallery

    root = Path(args.root)
    gallery = load_gallery(_in_root(root, args.gallery))
    summary = describe(gallery)
    checkpoint = _in_root(root, args.model)
    if checkpoint.is_file():
        current = embedder_fingerprint(checkpoint) == gallery.embedder
        summary["matches_model"] = current
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return EXIT_OK if summary.get("matches_model", True) else EXIT_UNUSABLE


# --------------------------------------------------------------------- parser


def _project_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", default=".", help="project root (default: .)")
    parser.add_argument("--params", default="params.yaml", help="relative to --root")
    parser.add_argument(
        "--model", default="models/embedder.pt", help="embedder checkpoint, relative to --root"
    )
    parser.add_argument(
        "--gallery", default="models/gallery.npz", help="gallery file, relative to --root"
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default=None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anime-face-id",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser(
        "check", help="validate params.yaml and list the characters and their slugs"
    )
    check.add_argument("--params", default="params.yaml")
    check.add_argument(
        "--fill",
        action="store_true",
        help="write in, at their defaults, the keys dvc.yaml's stages read and the file lacks",
    )
    check.set_defaults(handler=check_params)

    identify = commands.add_parser(
        "identify",
        help="name the characters in pictures",
        description="Detect every face (params.crop), embed it and name it from the gallery; "
        "faces scoring below the calibrated threshold are reported as unknown. Exit status: "
        "0 all pictures read, 1 some could not be read, 2 nothing could run.",
    )
    identify.add_argument("pictures", nargs="+", metavar="PICTURE")
    identify.add_argument("--json", action="store_true", help="one JSON document on stdout")
    identify.add_argument(
        "--top", type=int, default=None, help="candidate characters per face (identify.top)"
    )
    identify.add_argument(
        "--neighbours",
        type=int,
        default=None,
        help="nearest gallery images per face, in the JSON (identify.neighbours)",
    )
    _project_options(identify)
    identify.set_defaults(handler=identify_pictures)

    gallery = commands.add_parser("gallery", help="the gallery of known faces")
    actions = gallery.add_subparsers(dest="action", required=True)
    rebuild_cmd = actions.add_parser(
        "rebuild",
        help="re-embed curated crops with the current embedder (no training) and recalibrate",
    )
    rebuild_cmd.add_argument(
        "--source",
        choices=("train", "curated"),
        default=None,
        help="train split or every curated crop (default: package.gallery_source)",
    )
    _project_options(rebuild_cmd)
    rebuild_cmd.set_defaults(handler=rebuild)
    info_cmd = actions.add_parser("info", help="what the gallery holds, as JSON")
    _project_options(info_cmd)
    info_cmd.set_defaults(handler=info)
    return parser


def _check_counts(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.command != "identify":
        return
    if args.top is not None and not 1 <= args.top <= 50:
        parser.error("--top must be between 1 and 50")
    if args.neighbours is not None and not 0 <= args.neighbours <= 50:
        parser.error("--neighbours must be between 0 and 50")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_counts(parser, args)
    try:
        return args.handler(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_UNUSABLE
    except (StageError, CascadeError, OSError) as error:
        # a missing or stale model or gallery, a missing detector file: what to run is in
        # the message, so no traceback
        print(f"error: {error}", file=sys.stderr)
        return EXIT_UNUSABLE


def run() -> int:
    """The console script: ``main`` on the command line's arguments, then out quickly."""
    from anime_face_id.process_exit import skip_final_collection

    code = main()
    skip_final_collection()
    return code


if __name__ == "__main__":
    raise SystemExit(run())
