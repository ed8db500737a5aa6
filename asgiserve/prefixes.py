"""The router's prefix table: which application a path belongs to, and its parameters.

A prefix is a path such as `/api`, or a Starlette path pattern (`/users/{id:int}`) that
must end at a segment boundary; `/` matches every path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from starlette.convertors import Convertor
from starlette.routing import compile_path

from asgiserve import registry

NO_PARAMS: dict[str, Any] = {}  # read only
ROOT_MATCH = (0, NO_PARAMS)  # what the prefix `/` matches, in every path


@dataclass
class PrefixRoute:
    prefix: str
    app: registry.RunningApp
    pattern: re.Pattern[str] | None = None
    convertors: dict[str, Convertor[Any]] | None = None

    def match(self, path: str) -> tuple[int, dict[str, Any]] | None:
        """How much of `path` the prefix covers, and its path parameters; None if no match."""
        if self.pattern is None:
            prefix = self.prefix
            if prefix == "/":
                return ROOT_MATCH
            if path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/"):
                return len(prefix), NO_PARAMS
            return None
        found = self.pattern.match(path)
        if found is None:
            return None
        assert self.convertors is not None
        params = {}
        for key, value in found.groupdict().items():
            try:
                params[key] = self.convertors[key].convert(value)
            except ValueError:  # an int past Python's digit limit, a float out of range
                raise BadPathParameter(key) from None
        return found.end(), params


class BadPathParameter(ValueError):
    """A path parameter that matches its type's pattern but cannot be converted: a 400."""

    def __init__(self, name: str) -> None:
        super().__init__(f"path parameter {name!r} is out of range for its type")


def make_route(prefix: str, app: registry.RunningApp) -> PrefixRoute:
    if "{" not in prefix:
        return PrefixRoute(prefix, app)
    regex, _, convertors = compile_path(prefix)
    # compile_path anchors the whole path; a prefix must stop at a segment boundary instead.
    pattern = re.compile(regex.pattern.rstrip("$") + r"(?=/|$)")
    return PrefixRoute(prefix, app, pattern, convertors)


def normalise_prefix(prefix: str) -> str:
    if not prefix.startswith("/"):
        raise ValueError(f"route_prefix must start with '/', got {prefix!r}")
    return prefix.rstrip("/") or "/"
