"""How long `import asgiserve` takes in a fresh interpreter, and what it drags in.

    python benchmarks/import_time.py [--runs 10] [--json out.json]

The figure is the median wall time of `python -c "import asgiserve"` minus the median of
`python -c "pass"` (runs interleaved), so interpreter start-up is not counted. It also
checks that the optional heavy packages (ray, pandas, PIL) are not imported, and lists the
slowest imports from `python -X importtime`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = ("ray", "pandas", "PIL")  # optional extras: `import asgiserve` must not load them
NOTED = ("numpy", "fastapi", "pydantic", "cloudpickle")  # reported, not checked


def wall_time(code: str) -> float:
    """Seconds for a fresh interpreter to run `code` and exit."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    return time.perf_counter() - started


def import_cost(runs: int) -> tuple[float, float, float]:
    """Median import wall time, median bare start-up, and the difference, in ms."""
    wall_time("import asgiserve")  # warm the file system cache and .pyc files
    imports, empties = [], []
    for _ in range(runs):
        imports.append(wall_time("import asgiserve"))
        empties.append(wall_time("pass"))
    with_import = statistics.median(imports) * 1000
    bare = statistics.median(empties) * 1000
    return with_import, bare, with_import - bare


def loaded_modules(names: Sequence[str]) -> dict[str, bool]:
    code = (
        "import json, sys, asgiserve; "
        f"print(json.dumps({{n: n in sys.modules for n in {list(names)!r}}}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return {name: bool(found) for name, found in json.loads(done.stdout).items()}


def importtime(code: str) -> dict[str, int]:
    """Top-level modules `code` imports, with cumulative import time (us), from
    `-X importtime`."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    totals: dict[str, int] = {}
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = (part.strip() for part in line[len("import time:") :].split("|"))
        if cumulative.isdigit() and "." not in name:
            totals[name] = max(totals.get(name, 0), int(cumulative))
    return totals


def slowest_imports(count: int) -> list[tuple[str, int]]:
    """The slowest top-level modules `import asgiserve` loads that `pass` does not."""
    startup = importtime("pass")
    totals = importtime("import asgiserve")
    ours = {name: micros for name, micros in totals.items() if name not in startup}
    return sorted(ours.items(), key=lambda item: item[1], reverse=True)[:count]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="interpreters of each kind")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)

    with_import, bare, cost = import_cost(max(1, args.runs))
    forbidden = loaded_modules(FORBIDDEN)
    noted = loaded_modules(NOTED)
    slowest = slowest_imports(8)

    print(f"import asgiserve: {cost:.1f} ms  (median of {args.runs}: "
          f"{with_import:.1f} ms with the import, {bare:.1f} ms for `pass`)")  # fmt: skip
    bad = [name for name, found in forbidden.items() if found]
    print(f"optional packages loaded by the import: {', '.join(bad) or 'none'} "
          f"(checked {', '.join(FORBIDDEN)})")  # fmt: skip
    also = [name for name, found in noted.items() if found]
    print(f"heavier dependencies loaded: {', '.join(also) or 'none'} "
          f"(checked {', '.join(NOTED)})")  # fmt: skip
    print("slowest top-level modules it loads (cumulative, one -X importtime run):")
    for name, micros in slowest:
        print(f"  {name:<16} {micros / 1000:7.1f} ms")
    if args.json is not None:
        document = {
            "import_ms": cost,
            "with_import_ms": with_import,
            "bare_interpreter_ms": bare,
            "runs": args.runs,
            "forbidden_loaded": forbidden,
            "also_loaded": noted,
            "slowest_imports_ms": {name: micros / 1000 for name, micros in slowest},
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
