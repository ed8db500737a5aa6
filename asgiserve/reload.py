"""`asgiserve run --reload`: the server runs in a child process (the same command with
`--no-reload`), which is stopped and started again when a watched file changes.

One supervisor for both servers, rather than their own reloaders: uvicorn's wants an import
string and watches directories, Hypercorn's watches only the modules it has loaded. The
child is stopped (SIGTERM, as a graceful shutdown) and waited for before the next one
starts, so the port is free again and every replica of the old code is gone.
"""

from __future__ import annotations

import importlib.machinery
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from asgiserve import config_file, logs
from asgiserve.extras import install_hint
from asgiserve.host import RunSpec, say
from asgiserve.preflight import PreflightError, installed

CHILD_FLAG = "--no-reload"  # appended to the command line: the last of the two wins
STOP_MARGIN_S = 10.0  # past the server's graceful shutdown, the child is killed
POLL_MS = 1000  # how often, with no change, the supervisor checks that the child still runs


def watched(spec: RunSpec) -> tuple[list[str], set[str]]:
    """The folders to watch, and the files besides `.py` ones: `--reload-dir`s, else the app
    directory, and for a config file the file itself and its applications' modules."""
    if not installed("watchfiles"):
        raise PreflightError(f"--reload needs watchfiles, which is not installed; "
                             f"{install_hint(spec.server)}")  # fmt: skip
    files: set[str] = set()
    if config_file.is_config_file(spec.target):
        files.add(os.path.abspath(spec.target))
    if spec.http.reload_dirs:
        folders = [os.path.abspath(folder) for folder in spec.http.reload_dirs]
    else:
        folders = [os.path.abspath(spec.app_dir), *(os.path.dirname(file) for file in files)]
        if files:
            config = config_file.load(spec.target)
            modules = [entry.import_path.partition(":")[0] for entry in config.schema.applications]
            folders += [folder for module in modules if (folder := module_folder(module, spec))]
    for folder in folders:
        if not os.path.isdir(folder):
            raise PreflightError(f"--reload-dir {folder!r}: no such directory")
    return outermost(folders), files


def module_folder(module: str, spec: RunSpec) -> str | None:
    """Where a module's top-level package (or the module) lives, found without importing
    it (an import could deploy); None for one installed with Python."""
    top = module.partition(".")[0]
    places = [os.path.abspath(spec.app_dir), *sys.path]
    found = importlib.machinery.PathFinder.find_spec(top, places)
    if found is None or found.origin is None:
        return None
    folder = os.path.dirname(found.origin)
    if folder.startswith((sys.prefix, sys.base_prefix)):
        return None
    return folder


def outermost(folders: list[str]) -> list[str]:
    """Each folder once, leaving out those inside another (watches are recursive)."""
    unique = sorted(set(folders))
    return [f for f in unique if not any(Path(f).is_relative_to(o) and f != o for o in unique)]


def supervise(spec: RunSpec, argv: list[str], watch: tuple[list[str], set[str]]) -> int:
    """Run the command in a child, restarting it on each change, until SIGTERM or SIGINT;
    then stop it and exit with 0."""
    import watchfiles

    folders, files = watch
    logs.set_up_server(spec.http)  # its own lines in the server's format too
    stopped = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopped.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    command = [sys.executable, "-m", "asgiserve", *argv, CHILD_FLAG]
    wait_s = spec.http.graceful_shutdown_timeout_s + STOP_MARGIN_S
    say(f"asgiserve: watching {', '.join(folders)} for changes (--reload)")
    child = subprocess.Popen(command)
    reported = False
    changes: Any = watchfiles.watch(
        *folders,
        watch_filter=Changes(files),
        stop_event=stopped,
        rust_timeout=POLL_MS,
        yield_on_timeout=True,
        raise_interrupt=False,
    )
    for changed in changes:
        if not changed:  # a timeout: say once that the server has exited by itself
            code = child.poll()
            if code is not None and not reported:
                say(f"asgiserve: the server exited with code {code}; it restarts on a change")
            reported = code is not None
            continue
        names = sorted(os.path.relpath(path) for _, path in changed)
        say(f"asgiserve: {', '.join(names)} changed; restarting the server")
        end(child, wait_s)
        child = subprocess.Popen(command)
        reported = False
    end(child, wait_s)
    return 0


class Changes:
    """`.py` files and `files`, leaving out what watchfiles leaves out by default (caches,
    editors' swap files, `.git`)."""

    def __init__(self, files: set[str]) -> None:
        import watchfiles

        self.python = watchfiles.PythonFilter()
        self.default = watchfiles.DefaultFilter()
        self.files = files

    def __call__(self, change: Any, path: str) -> bool:
        if os.path.abspath(path) in self.files:
            return bool(self.default(change, path))
        return bool(self.python(change, path))


def end(child: subprocess.Popen[bytes], wait_s: float) -> None:
    """Stop the child as a graceful shutdown, and kill it if it takes longer than `wait_s`."""
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(wait_s)
        except subprocess.TimeoutExpired:
            child.kill()
    child.wait()
