"""Stops a local Ray that asgiserve started when its server process ends, however it ends.

`ray.shutdown()` at exit never runs when a server is killed, or re-raises SIGTERM after
its graceful shutdown as uvicorn does, and Ray's agents outlive the driver. So when
`RayBackend` starts Ray itself it also starts this watcher (`python -m
asgiserve.backends.ray_watch SERVER_PID`), which notes the server's Ray processes while
the server lives (its descendants, agents included) and ends them once it is gone.
Linux only (it reads /proc); elsewhere it exits at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

POLL_S = 0.5
KILL_AFTER_S = 3.0  # SIGTERM first; what is still there then gets SIGKILL


def parents() -> dict[int, int]:
    """pid -> parent pid of every process."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                with open(f"/proc/{entry}/stat") as stat:
                    # the name, in parentheses, may hold spaces: the ppid follows its end
                    found[int(entry)] = int(stat.read().rpartition(")")[2].split()[1])
    return found


def is_ray(pid: int) -> bool:
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return b"ray" in cmdline.read()
    return False


def ray_descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, parent in parents().items():
        children.setdefault(parent, []).append(pid)
    found: set[int] = set()
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid != os.getpid():
            found.add(pid)
            todo.extend(children.get(pid, []))
    return {pid for pid in found if is_ray(pid)}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main() -> None:
    server = int(sys.argv[1])
    if not os.path.isdir("/proc"):
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group
    noted: set[int] = set()
    while os.getppid() == server:  # the server's exit hands this process to another parent
        noted = {pid for pid in noted if alive(pid)} | ray_descendants(server)
        time.sleep(POLL_S)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in noted:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        deadline = time.monotonic() + KILL_AFTER_S
        while any(alive(pid) for pid in noted) and time.monotonic() < deadline:
            time.sleep(0.1)


if __name__ == "__main__":
    main()
