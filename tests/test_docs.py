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
- `<!-- main.py -->` before a block says it belongs to the page's `main.py`, which its
  shell commands serve (tests/test_commands.py); the block runs here all the same.
- After the page, `asgiserve.shutdown()` runs (the `backend` fixture), whatever the page did.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import pytest

from tests.markdown import parse
from tests.servers import serve

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = sorted(path.name for path in DOCS.glob("*.md"))


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
