"""The commands a README shows: fenced ``bash`` blocks and inline code that starts like a
command, as a reader would copy them (continuation lines joined, trailing comments cut)."""

from __future__ import annotations

import re
from dataclasses import dataclass

INLINE_COMMAND = re.compile(
    r"`((?:make |\.venv/bin/|sh flows/run|source |[A-Z_]+=\S+ \.venv/bin/)[^`]*)`"
)


@dataclass(frozen=True)
class Command:
    text: str
    line: int  # where it starts in the README, 1-based
    inline: bool


def strip_comment(line: str) -> str:
    """``line`` without a shell comment: a ``#`` that starts a word outside quotes."""
    quote = None
    for index, char in enumerate(line):
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index].rstrip()
    return line.rstrip()


def block_commands(lines: list[str]) -> list[Command]:
    commands: list[Command] = []
    inside = False
    pending: tuple[str, int] | None = None
    for number, raw in enumerate(lines, start=1):
        if raw.startswith("```"):
            inside = raw.strip() in ("```bash", "```sh", "```shell")
            pending = None
            continue
        if not inside:
            continue
        text = strip_comment(raw)
        if not text.strip():
            continue
        if pending is not None:
            text, number = f"{pending[0]}\n{text}", pending[1]
            pending = None
        if text.endswith(("|", "\\", "&&")):
            pending = (text, number)
            continue
        commands.append(Command(text.strip(), number, inline=False))
    return commands


def inline_commands(lines: list[str]) -> list[Command]:
    commands: list[Command] = []
    inside_block = False
    for number, raw in enumerate(lines, start=1):
        if raw.startswith("```"):
            inside_block = not inside_block
            continue
        if inside_block:
            continue
        for match in INLINE_COMMAND.finditer(raw):
            commands.append(Command(match.group(1).strip(), number, inline=True))
    return commands


def readme_commands(text: str) -> list[Command]:
    lines = text.splitlines()
    return block_commands(lines) + inline_commands(lines)
