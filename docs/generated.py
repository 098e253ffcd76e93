"""The generated blocks of README.md and docs/: text between ``<!-- generated: KEY -->`` and
``<!-- end: KEY -->``, rewritten from results/ by make_figures.py and make_tutorial.py."""

from __future__ import annotations

import re
from pathlib import Path


def replace_between(text: str, key: str, content: str, path: Path) -> str:
    begin, end = f"<!-- generated: {key} -->", f"<!-- end: {key} -->"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{path} has no {begin} ... {end} markers")
    return pattern.sub(lambda _: f"{begin}\n{content}\n{end}", text)


def update(blocks: list[tuple[Path, str, str]], check: bool, fix: str) -> int:
    """Write each (file, key, content) block; with ``check``, write nothing and return 1 if a
    file differs from what the blocks give, naming it and the command ``fix`` that renews it."""
    new: dict[Path, str] = {}
    for path, key, content in blocks:
        new[path] = replace_between(new.get(path, path.read_text()), key, content, path)
    stale = [path for path, text in new.items() if text != path.read_text()]
    if check:
        for path in stale:
            print(f"stale: {path}: run {fix}")
        return int(bool(stale))
    for path in stale:
        path.write_text(new[path])
    return 0
