"""Every ```python block in docs/*.md runs.

The convention, for whoever writes docs:

- Only fenced blocks whose info string is exactly `python` run. ```bash, ```text,
  ```console, ```py and the rest are shown, never run.
- A page's blocks run in order, in one namespace, in this process (no event loop running,
  as in a plain script), so later blocks use what earlier ones defined.
- A block whose previous non-blank line is `<!-- serve -->` needs a live server. Before it
  runs, the test serves the namespace's `app` with a real uvicorn server on a free loopback
  port and sets `BASE_URL` in the namespace to that server's URL (`http://127.0.0.1:PORT`);
  the server stops when the block ends. Options go in the comment, space-separated:
  `<!-- serve server=hypercorn -->` (uvicorn by default), `<!-- serve root_path=/proxy -->`
  (the server's `--root-path`). A page should define `BASE_URL = "http://127.0.0.1:8000"`
  in an ordinary block first, so a reader's copy of the code runs too; the test overrides it.
- After the page, `asgiserve.shutdown()` runs (the `backend` fixture), whatever the page did.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.servers import serve

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = sorted(path.name for path in DOCS.glob("*.md"))

FENCE = re.compile(r"^(?P<fence>```+|~~~+)(?P<info>.*)$")
SERVE = re.compile(r"^<!--\s*serve(?P<options>(\s+\S+=\S+)*)\s*-->$")


@dataclass
class Block:
    line: int  # 1-based line of the first code line
    code: str
    serve: dict[str, str] | None = None  # options when marked `<!-- serve -->`
    info: str = "python"


@dataclass
class Page:
    blocks: list[Block] = field(default_factory=list)
    skipped: list[Block] = field(default_factory=list)  # fenced blocks that are not `python`


def parse(text: str) -> Page:
    page = Page()
    lines = text.splitlines()
    previous = ""  # the last non-blank line outside a code block
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
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
        block = Block(start + 1, "\n".join(lines[start:i]) + "\n", options, info)
        if info == "python":
            page.blocks.append(block)
        else:
            if options is not None:
                raise ValueError(f"line {start}: <!-- serve --> before a ```{info} block")
            page.skipped.append(block)
        previous = ""
        i += 1
    return page


@contextmanager
def live_server(namespace: dict[str, Any], options: dict[str, str]) -> Iterator[None]:
    unknown = set(options) - {"server", "root_path"}
    if unknown:
        raise ValueError(f"unknown <!-- serve --> options {sorted(unknown)}")
    app = namespace.get("app")
    if app is None:
        raise ValueError("a <!-- serve --> block needs `app` defined by an earlier block")
    kind = options.get("server", "uvicorn")
    with serve(app, kind, root_path=options.get("root_path", "")) as server:
        namespace["BASE_URL"] = server.url
        yield


def test_parse_convention() -> None:
    page = parse(
        "text\n```python\na = 1\n```\n\n<!-- serve server=hypercorn -->\n\n```python\nb = 2\n```\n"
        "```bash\nuvicorn main:app\n```\n```python title\nnot run\n```\n"
    )
    assert [(b.line, b.code, b.serve) for b in page.blocks] == [
        (3, "a = 1\n", None),
        (9, "b = 2\n", {"server": "hypercorn"}),
    ]
    assert [b.info for b in page.skipped] == ["bash", "python title"]


def test_there_are_docs() -> None:
    assert {"getting-started.md", "http.md"} <= set(PAGES)


@pytest.mark.parametrize("page_name", PAGES)
def test_page_runs(page_name: str, backend: str) -> None:
    path = DOCS / page_name
    page = parse(path.read_text())
    assert page.blocks, f"{page_name} has no python blocks"
    namespace: dict[str, Any] = {"__name__": f"docs_{path.stem.replace('-', '_')}"}
    for block in page.blocks:
        # Line numbers in tracebacks point into the Markdown file.
        code = compile("\n" * (block.line - 1) + block.code, str(path), "exec")
        context = nullcontext() if block.serve is None else live_server(namespace, block.serve)
        with context:
            exec(code, namespace)
