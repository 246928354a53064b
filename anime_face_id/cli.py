"""The `anime-face-id` console script."""

from __future__ import annotations

import argparse
import sys

from anime_face_id.config import ConfigError, load_params


def check_params(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    slugs = params.slugs
    print(
        f"{args.params}: OK, {len(params.characters)} characters, backend {params.collect.backend}"
    )
    for character in params.characters:
        print(f"  {slugs[character.name]:<32} {character.name}  (query: {character.search_query})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anime-face-id", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser(
        "check", help="validate params.yaml and list the characters and their slugs"
    )
    check.add_argument("--params", default="params.yaml")
    check.set_defaults(handler=check_params)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
