"""Markdown pages as the doc tests read them: fenced code blocks, in order, and the prose.

See tests/test_docs.py for the conventions (`<!-- serve -->`); tests/test_commands.py runs
the shell commands the same pages show.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

FENCE = re.compile(r"^(?P<fence>```+|~~~+)(?P<info>.*)$")
SERVE = re.compile(r"^<!--\s*serve(?P<options>(\s+\S+=\S+)*)\s*-->$")
MAIN = "<!-- main.py -->"  # the block is part of the page's main.py (tests/test_commands.py)


@dataclass
class Block:
    line: int  # 1-based line of the first code line
    code: str
    serve: dict[str, str] | None = None  # options when marked `<!-- serve -->`
    info: str = "python"
    main: bool = False  # marked `<!-- main.py -->`


@dataclass
class Page:
    blocks: list[Block] = field(default_factory=list)
    skipped: list[Block] = field(default_factory=list)  # fenced blocks that are not `python`
    prose: list[tuple[int, str]] = field(default_factory=list)  # (line, text) outside blocks


def parse(text: str) -> Page:
    page = Page()
    lines = text.splitlines()
    previous = ""  # the last non-blank line outside a code block
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            page.prose.append((i + 1, lines[i]))
            if lines[i].strip():
                previous = lines[i].strip()
            i += 1
            continue
        fence, info = opening["fence"], opening["info"].strip()
        start = i + 1
        i += 1
        while i < len(lines) and not lines[i].startswith(fence):
            i += 1
        if i == len(lines):
            raise ValueError(f"unclosed code block opened on line {start}")
        marker = SERVE.match(previous)
        options = None
        if marker is not None:
            options = dict(item.split("=", 1) for item in shlex.split(marker["options"]))
        block = Block(start + 1, "\n".join(lines[start:i]) + "\n", options, info, previous == MAIN)
        if block.main and info != "python":
            raise ValueError(f"line {start}: {MAIN} before a ```{info} block")
        if info == "python":
            page.blocks.append(block)
        else:
            if options is not None:
                raise ValueError(f"line {start}: <!-- serve --> before a ```{info} block")
            page.skipped.append(block)
        previous = ""
        i += 1
    return page
