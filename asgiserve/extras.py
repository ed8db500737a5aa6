"""What to install for an optional part of asgiserve, as an error message says it."""

from __future__ import annotations


def install_hint(extra: str) -> str:
    """Both forms: from PyPI, and from a checkout (where `asgiserve[x]` names no package)."""
    return f"pip install 'asgiserve[{extra}]' (or, in a checkout: pip install -e '.[{extra}]')"
