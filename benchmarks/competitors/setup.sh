#!/usr/bin/env bash
# Create the virtual environment that http_bench.py runs the competitors from (Ray Serve
# and LitServe). It is kept apart from the project's venv so neither framework ever becomes
# a dependency of asgiserve or changes the versions its own benchmarks run against.
#
#   bash benchmarks/competitors/setup.sh                     # -> /tmp/asgiserve-competitors-venv
#   COMPETITORS_VENV=~/venvs/competitors bash benchmarks/competitors/setup.sh
#
# Versions are pinned so figures from different runs compare the same code; override with
# RAY_VERSION / LITSERVE_VERSION. PYTHON picks the interpreter (default python3, >= 3.10).
set -euo pipefail

VENV="${COMPETITORS_VENV:-/tmp/asgiserve-competitors-venv}"
PYTHON="${PYTHON:-python3}"
RAY_VERSION="${RAY_VERSION:-2.60.0}"
LITSERVE_VERSION="${LITSERVE_VERSION:-0.2.19}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV with $("$PYTHON" --version)"
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# uvicorn[standard] brings uvloop and httptools, which the project's own servers use too.
"$VENV/bin/python" -m pip install --quiet \
    "ray[serve]==$RAY_VERSION" \
    "litserve==$LITSERVE_VERSION" \
    "uvicorn[standard]"
"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md

for name in ("ray", "litserve", "uvicorn", "fastapi", "starlette", "uvloop", "httptools"):
    print(f"{name} {md.version(name)}")
EOF
echo "competitors venv ready: $VENV"
