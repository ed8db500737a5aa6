"""Every shell command shown in README.md, docs/*.md and the examples' docstrings runs.

So the commands cannot drift from the code they serve. What counts as a command:

- each line of a ```bash block (comments dropped; `A && B` is two commands, `cd DIR && B`
  runs B in DIR, leading `VAR=value` words go to B's environment);
- an inline `curl ...` in a page's prose; "answers `X`" after it is the body it must get;
- in an example's docstring, each line that starts (after a `Label:`) with a program;
  "->  X" or "(..., answers X)" after a command is the body it must get (`...` stands for
  anything).

A docs page's commands run in a temporary directory holding `main.py` (the page's python
blocks above the command, as a reader copies them: those marked `<!-- main.py -->` if the
page marks any, else all but the `<!-- serve -->` ones, which talk to a running server)
and `serve.yaml` (the page's ```yaml block); the README's and the examples' run from the
repository's root, where their `--app-dir examples` and `cd examples` point.
Each server command runs on a free loopback port (`8000` and `8080` in commands, URLs
and `serve.yaml` become that port; `--port` is added where none is given) until
`/-/healthz` answers 200; then every client command of the same page or docstring runs
against it (curl must exit 0 with a status below 400), and SIGTERM must end the server
cleanly. A command that is neither a server, a client nor handled below fails the test.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.markdown import Page, parse
from tests.servers import free_port
from tests.test_hosting import self_signed

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["README.md", *sorted(f"docs/{path.name}" for path in (ROOT / "docs").glob("*.md"))]
EXAMPLES = sorted(f"examples/{path.name}" for path in (ROOT / "examples").glob("*.py"))

SERVERS = {"uvicorn", "hypercorn", "asgiserve"}
CLIENTS = {"curl", "open"}
PROGRAMS = SERVERS | CLIENTS | {"python", "pip", "ray", "cd"}
# Shown, not run here; (where, command) -> why. A stale entry fails test_allow_list_is_used.
NOT_RUN = {
    ("README.md", "python -m pytest"): "the test suite itself; .ci/run runs this very line",
    ("docs/backends.md", "ray start --head"): (
        "starts a Ray head node whose daemons outlive the test on a shared machine; the "
        "tests share one local Ray instead (tests/conftest.py) and test_ray.py covers sharing"
    ),
    ("docs/backends.md", "uvicorn main:app --workers 4"): (
        "needs the cluster `ray start --head` makes, and the page's code above starts a Ray "
        "of its own per worker; tests/test_hosting.py runs --workers on the other backends"
    ),
}
# Commands whose point is a failure, with the exit code that failure must give.
EXPECTED_EXIT = {
    ("examples/cancellation.py", "curl -m 1 http://127.0.0.1:8000/startled"): 28,  # timed out
}
SCRIPT = re.compile(r"python examples/\w+\.py$")  # test_examples.py runs these
INLINE_CURL = re.compile(r"`(curl [^`]+)`(?:\s+answers\s+`([^`]+)`)?")
DOC_PORT = re.compile(r"\b(?:127\.0\.0\.1|localhost):(?:8000|8080)\b")
ANSWER = re.compile(r"(?:->|answers)\s+([^)]+)\)?$")


@dataclass
class Shown:
    """One command as a page shows it, where it is shown and what it must answer."""

    where: str  # "docs/deploying.md:49"
    text: str
    expect: str | None = None

    @property
    def source(self) -> str:
        return self.where.split(":")[0]

    @property
    def line(self) -> int:
        return int(self.where.split(":")[1])

    @property
    def program(self) -> str:
        words = argv_and_env(self.text)[0]
        if words[0] == sys.executable:
            words = ["python", *words[1:]]
        if words[:2] == ["python", "-m"]:
            return words[2]
        return words[0]


@dataclass
class Target:
    """A page or docstring: its commands and the files they run against."""

    name: str
    commands: list[Shown] = field(default_factory=list)
    page: Page | None = None  # a docs page: main.py and serve.yaml come from it

    def servers(self) -> list[Shown]:
        return [c for c in self.commands if c.program in SERVERS and not_run(c) is None]

    def clients(self) -> list[Shown]:
        return [c for c in self.commands if c.program in CLIENTS or c.text.startswith("python -c")]


def split_line(text: str) -> list[str]:
    """`A && B  # comment` -> ["A", "B"]; `cd DIR && B` stays one command."""
    commands: list[list[str]] = [[]]
    for word in shlex.split(text, comments=True):
        if word == "&&" and commands[-1][:1] != ["cd"]:
            commands.append([])
        else:
            commands[-1].append(word)
    return [shlex.join(words).replace("'&&'", "&&") for words in commands if words]


def page_commands(name: str, text: str) -> Target:
    page = parse(text)
    target = Target(name, page=page)
    for block in page.skipped:
        if block.info != "bash":
            continue
        for offset, line in enumerate(block.code.splitlines()):
            for command in split_line(line):
                target.commands.append(Shown(f"{name}:{block.line + offset}", command))
    paragraphs: list[tuple[int, str]] = []  # (first line, text) of each run of prose lines
    last = 0
    for number, line in page.prose:
        if paragraphs and line.strip() and paragraphs[-1][1] and number == last + 1:
            paragraphs[-1] = (paragraphs[-1][0], f"{paragraphs[-1][1]} {line.strip()}")
        else:
            paragraphs.append((number, line.strip()))
        last = number
    for number, paragraph in paragraphs:
        for match in INLINE_CURL.finditer(paragraph):
            target.commands.append(Shown(f"{name}:{number}", match[1], match[2]))
    target.commands.sort(key=lambda c: c.line)
    return target


def docstring_commands(name: str, doc: str, first_line: int = 1) -> Target:
    """The commands of an example's docstring, given as written (backslashes kept)."""
    target = Target(name)
    lines = doc.splitlines()
    i = 0
    while i < len(lines):
        number, line = first_line + i, re.sub(r"^\s*([A-Z][\w ]*:)?\s*", "", lines[i])
        while line.endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line[:-1].rstrip() + " " + lines[i].strip()
        i += 1
        line = re.sub(r"->\s+", "-> ", line)
        if line.startswith("->") and target.commands:  # the answer, on a line of its own
            target.commands[-1].expect = line[3:].strip()
            continue
        if line.split(" ", 1)[0] not in PROGRAMS:
            continue
        for part in re.split(r"\s{2,}(?:and\s{2,})?|\s+(?=\()", line):
            if part.split(" ", 1)[0] in PROGRAMS:
                target.commands.append(Shown(f"{name}:{number}", part))
            elif (answer := ANSWER.search(part)) and target.commands:
                target.commands[-1].expect = answer[1].strip()
    return target


def example_commands(name: str) -> Target:
    source = (ROOT / name).read_text()
    node = ast.parse(source).body[0]
    assert isinstance(node, ast.Expr), f"{name} has no docstring"
    doc = source.splitlines()[node.lineno - 1 : node.end_lineno]
    return docstring_commands(name, "\n".join(doc).strip('"'), node.lineno)


def targets() -> list[Target]:
    found = [page_commands(name, (ROOT / name).read_text()) for name in PAGES]
    found += [example_commands(name) for name in EXAMPLES]
    return [target for target in found if target.commands]


def not_run(command: Shown) -> str | None:
    """Why `command` is not run (it is checked some other way), or None."""
    if (command.source, command.text) in NOT_RUN:
        return NOT_RUN[(command.source, command.text)]
    if SCRIPT.match(command.text):
        return "serves on :8000 and runs the example's client; test_examples.py runs these"
    if command.program == "pip":
        return "installs; test_pip_extras_exist checks the extras it names"
    return None


# -- running them -------------------------------------------------------------------------


def rewrite(text: str, port: int) -> str:
    text = DOC_PORT.sub(f"127.0.0.1:{port}", text)
    return re.sub(r"--port \d+", f"--port {port}", text)


def argv_and_env(text: str) -> tuple[list[str], dict[str, str], str | None]:
    """The argv to run for `text` with this interpreter, its extra environment and cwd."""
    cwd = None
    if text.startswith("cd "):
        cd, text = text.split(" && ", 1)
        cwd = shlex.split(cd)[1]
    words = shlex.split(text)
    env = {}
    while re.match(r"[A-Z_]+=", words[0]):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    if words[0] in SERVERS:  # the console scripts, from the interpreter under test
        words = [sys.executable, "-m", *words]
    elif words[0] == "python":
        words = [sys.executable, *words[1:]]
    return words, env, cwd


def server_argv(text: str, port: int) -> tuple[list[str], dict[str, str], str | None]:
    argv, env, cwd = argv_and_env(rewrite(text, port))
    program = argv[2]
    if program in {"uvicorn", "asgiserve"} and "--port" not in argv:
        argv += ["--port", str(port)]
    if program == "hypercorn" and not any(a.startswith("--bind") for a in argv):
        argv += ["--bind", f"127.0.0.1:{port}"]
    if "--workers" in argv:  # two show the same on a 2-core machine
        argv[argv.index("--workers") + 1] = "2"
    return argv, env, cwd


def write_files(target: Target, before_line: int, directory: Path, port: int) -> None:
    """main.py and serve.yaml as a reader of the page has them at that line."""
    assert target.page is not None
    above = [b for b in target.page.blocks if b.line < before_line and b.serve is None]
    if any(b.main for b in target.page.blocks):  # the page says which blocks are main.py
        above = [b for b in above if b.main]
    code = [b.code for b in above]
    (directory / "main.py").write_text("\n\n".join(code))
    configs = [b.code for b in target.page.skipped if b.info == "yaml"]
    assert len(configs) <= 1, f"{target.name}: which ```yaml block is serve.yaml?"
    if configs:
        config = rewrite(configs[0], port).replace("port: 8000", f"port: {port}")
        (directory / "serve.yaml").write_text(config.replace("0.0.0.0", "127.0.0.1"))


@contextmanager
def running(command: Shown, cwd: Path, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    argv, env, subdir = server_argv(command.text, port)
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "ASGISERVE_BACKEND": "inprocess"}
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv,
            cwd=cwd / subdir if subdir else cwd,
            env={**environment, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, killed below if it hangs
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_healthy(
    command: Shown, process: subprocess.Popen[bytes], port: int, log: Path, timeout: float = 60
) -> None:
    ready = {200} if command.program == "asgiserve" else {200, 404}
    scheme = "https" if "--ssl-certfile" in command.text else "http"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}:\n{tail(log)}")
        try:
            # 404: an app that does not mount the router (its status routes) is up once
            # it answers at all, as uvicorn and Hypercorn answer after lifespan startup.
            url = f"{scheme}://127.0.0.1:{port}/-/healthz"
            if httpx.get(url, timeout=2, verify=False).status_code in ready:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    pytest.fail(f"/-/healthz did not answer 200 within {timeout} s:\n{tail(log)}")


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:]


def matches(expect: str, body: str) -> bool:
    pattern = ".*".join(re.escape(piece) for piece in expect.split("..."))
    return re.fullmatch(pattern, body.strip(), flags=re.S) is not None


def run_client(command: Shown, port: int, cwd: Path) -> None:
    text = rewrite(command.text, port)
    what = f"{command.where}: {command.text}"
    if command.program == "open":  # what a browser does
        response = httpx.get(shlex.split(text)[1], timeout=30)
        assert response.status_code < 400, what
        return
    argv, env, _ = argv_and_env(text)
    if argv[0] == "curl":
        argv = ["curl", "-sS", "-w", "\n%{http_code}", *argv[1:]]
    done = subprocess.run(
        argv, cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True, timeout=60
    )
    output = done.stdout
    expected_exit = EXPECTED_EXIT.get((command.source, command.text), 0)
    assert done.returncode == expected_exit, f"{what}\n{done.stdout}{done.stderr}"
    if expected_exit:
        return
    if argv[0] == "curl":
        output, status = output.rsplit("\n", 1)
        assert int(status) < 400, f"{what}: HTTP {status}\n{output}"
        if "-i" in argv:  # the headers, then a blank line (text mode made \r\n of it \n)
            output = output.split("\n\n", 1)[1]
    if command.expect is not None:
        assert matches(command.expect, output), f"{what}: answered {output!r}"


def stop(command: Shown, process: subprocess.Popen[bytes], log: Path) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{command.where}: still running 30 s after SIGTERM:\n{tail(log)}")
    # uvicorn and Hypercorn raise the signal again once they have shut down (a shell shows
    # 143); `asgiserve run` exits with 0, as docs/deploying.md promises.
    clean = {0} if command.program == "asgiserve" else {0, -signal.SIGTERM}
    assert code in clean, f"{command.where}: exit {code}\n{tail(log)}"


# -- the tests ----------------------------------------------------------------------------

TARGETS = targets()


def test_commands_are_found() -> None:
    names = {target.name for target in TARGETS}
    assert {"README.md", "docs/getting-started.md", "docs/deploying.md"} <= names
    assert {"examples/counter.py", "examples/dagdriver.py"} <= names
    readme = next(target for target in TARGETS if target.name == "README.md")
    assert [c.expect for c in readme.clients()] == ['{"scale":2.0,"result":8.0}', "42.0"]


def test_every_command_is_run_or_says_why_not() -> None:
    """A new command that is neither a server, a client nor allow-listed fails here."""
    for target in TARGETS:
        for command in target.commands:
            if not_run(command) is None:
                runnable = command.program in SERVERS | CLIENTS or command.text.startswith(
                    "python -c"
                )
                assert runnable, f"{command.where}: no way to run {command.text!r}"
        if target.clients():
            assert target.servers(), f"{target.name}: client commands but no server to ask"


def test_allow_list_is_used() -> None:
    shown = {(c.source, c.text) for target in TARGETS for c in target.commands}
    assert set(NOT_RUN) <= shown and set(EXPECTED_EXIT) <= shown


def test_an_unknown_command_is_caught() -> None:
    target = page_commands("docs/new.md", "```bash\nkubectl apply -f serve.yaml\n```\n")
    assert [c.program for c in target.commands] == ["kubectl"]
    assert not_run(target.commands[0]) is None and not target.servers()


def test_parsing_docstring_commands() -> None:
    target = docstring_commands(
        "examples/x.py",
        "Or serve:  uvicorn --app-dir examples x:app --port 8000\n"
        "Then:      curl -d '[1]' \\\n                localhost:8000/p   ->  10.0\n"
        "           curl http://127.0.0.1:8000/a   (prints A, answers null)\n"
        "           curl 'http://127.0.0.1:8000/b'   and   curl http://127.0.0.1:8000/c\n"
        "           ->  {\"a\":1,...}\n",
    )
    assert [(c.text, c.expect) for c in target.commands] == [
        ("uvicorn --app-dir examples x:app --port 8000", None),
        ("curl -d '[1]' localhost:8000/p", "10.0"),
        ("curl http://127.0.0.1:8000/a", "null"),
        ("curl 'http://127.0.0.1:8000/b'", None),
        ("curl http://127.0.0.1:8000/c", '{"a":1,...}'),
    ]
    assert matches('{"a":1,...}', '{"a":1,"b":2}') and not matches("10.0", "100")


def test_pip_extras_exist() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    installs = [c for t in TARGETS for c in t.commands if c.program == "pip"]
    assert installs
    for command in installs:
        for shown in re.findall(r"\[([\w,-]+)\]", command.text):
            assert set(shown.split(",")) <= set(extras), command.where


SLOW = {"docs/deploying.md"}  # a dozen servers, about 18 s


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(t.name, marks=[pytest.mark.slow] if t.name in SLOW else [])
        for t in TARGETS
        if t.servers()
    ],
)
def test_commands_run(name: str, tmp_path: Path) -> None:
    target = next(target for target in TARGETS if target.name == name)
    for command in target.servers():
        port = free_port()
        cwd = ROOT
        if target.page is not None and name != "README.md":
            cwd = tmp_path
            write_files(target, command.line, cwd, port)
        if "--ssl-certfile" in command.text:  # the key and certificate the page says to make
            self_signed(cwd)
        for folder in re.findall(r"--reload-dir (\S+)", command.text):  # the reader's own
            (cwd / folder).mkdir(exist_ok=True)
        log = tmp_path / "server.log"
        with running(command, cwd, port, log) as process:
            wait_healthy(command, process, port, log)
            for client in target.clients():
                run_client(client, port, cwd)
            stop(command, process, log)
