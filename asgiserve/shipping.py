"""How a deployment's code reaches a worker process or a Ray actor.

A worker runs the user's real module, as uvicorn's and gunicorn's workers import an app:
a deployment defined in an importable module is pickled as a reference (module path and
name) and imported there, so module globals, class identity, library sentinels and
tracebacks are the real ones. Only what has no import path (a `__main__` script's
classes, closures, an interactive session, a module the worker could not import) travels
by value, with cloudpickle, and with its source so that tracebacks still show its lines.

Importing a module in a worker deploys nothing: `asgiserve.run()` there only returns a
handle to the server's application (see `api.run`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib
import importlib.machinery
import inspect
import io
import linecache
import os
import pickle
import sys
import sysconfig
import threading
import types
from typing import Any

import cloudpickle

from asgiserve.backends.base import ReplicaSpec
from asgiserve.deployment import Deployment
from asgiserve.exceptions import ShippingError


def worker_path() -> list[str]:
    """This process's `sys.path` with every entry absolute: a Ray worker runs elsewhere."""
    return [os.path.abspath(entry) if entry else os.getcwd() for entry in sys.path]


@functools.lru_cache(maxsize=256)
def found_on_path(name: str, origin: str | None, path: tuple[str, ...]) -> bool:
    spec = importlib.machinery.PathFinder.find_spec(name, list(path))
    return spec is not None and spec.origin == origin


def importable(module_name: str) -> bool:
    """Would a fresh interpreter with this `sys.path` import the same module by this name?

    Not `__main__` (a script imported by name would run its client code again), and its
    top-level package must be found on `sys.path` where this process found it (a module
    loaded from a file by hand is not).
    """
    module = sys.modules.get(module_name)
    spec = getattr(module, "__spec__", None)
    if module_name == "__main__" or spec is None or spec.name != module_name:
        return False
    top = sys.modules.get(module_name.partition(".")[0])
    top_spec = getattr(top, "__spec__", None)
    if top_spec is None:
        return False
    return found_on_path(top_spec.name, top_spec.origin, tuple(worker_path()))


def lookup(module: Any, qualname: str) -> Any:
    found = module
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return found


def target_reference(obj: Any) -> tuple[Any, tuple[str, str]] | None:
    """A reduction that imports a deployment's class or function by name, if it has one.

    `@asgiserve.deployment` puts a `Deployment` where the class was, so pickle's own
    lookup by name finds the wrong object and cloudpickle would ship the class by value.
    """
    module_name = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(module_name, str) or not isinstance(qualname, str):
        return None
    found = lookup(sys.modules.get(module_name), qualname)
    if not isinstance(found, Deployment) or found.target is not obj:
        return None
    if module_name in cloudpickle.list_registry_pickle_by_value() or not importable(module_name):
        return None
    return deployment_target, (module_name, qualname)


def deployment_target(module_name: str, qualname: str) -> Any:
    """In the worker: import the user's module and take the deployment's class from it."""
    found = lookup(importlib.import_module(module_name), qualname)
    if not isinstance(found, Deployment):
        raise ImportError(f"{module_name}.{qualname} is no longer a deployment", name=module_name)
    return found.target


def installed(module_file: str) -> bool:
    paths = sysconfig.get_paths()
    return module_file.startswith((paths["purelib"], paths["platlib"], paths["stdlib"]))


def resolve_annotations(target: Any) -> None:
    """Turn a class's string annotations into the objects they name, before shipping it.

    A function shipped by value takes only the globals its code uses, so names used only in
    annotations (`request: Request` under `from __future__ import annotations`) would be
    missing in the worker, where FastAPI reads the signatures of class-based views again.
    """
    for klass in getattr(target, "__mro__", ())[:-1]:
        for value in vars(klass).values():
            annotations = getattr(value, "__annotations__", None)
            if inspect.isfunction(value) and any(isinstance(a, str) for a in annotations or {}):
                with contextlib.suppress(Exception):  # unresolvable: FastAPI will say so
                    value.__annotations__ = inspect.get_annotations(value, eval_str=True)


def module_to_copy(target: Any, by_value: bool) -> types.ModuleType | None:
    """The target's module, when it must travel by value though it has a name: the worker
    could not import it (or `by_value` says the Ray node cannot). Installed packages and
    asgiserve's own modules are always imported by name."""
    name = getattr(target, "__module__", None) or "__main__"
    module = sys.modules.get(name)
    module_file = getattr(module, "__file__", None)
    if module is None or module_file is None or name == "__main__":
        return None  # cloudpickle ships `__main__` by value anyway
    if name.partition(".")[0] == "asgiserve" or installed(module_file):
        return None
    return module if by_value or not importable(name) else None


by_value_lock = threading.Lock()


def pickle_spec(spec: ReplicaSpec, by_value: bool = False) -> bytes:
    """The spec for a worker: its target by reference when importable there, else by value
    together with the source of the code that travels (for tracebacks)."""
    from asgiserve.backends.wire import Pickler, dumps_with

    spec = dataclasses.replace(spec, config=dataclasses.replace(spec.config, backend=None))
    module = module_to_copy(spec.target, by_value)
    if module is not None or target_reference(spec.target) is None:
        resolve_annotations(spec.target)
    with by_value_lock:  # replicas start side by side; registration is process-wide
        if module is not None:
            cloudpickle.register_pickle_by_value(module)
        try:
            data, pickler = dumps_with(spec)
        except Exception as exc:
            raise ShippingError(unshippable_message(spec, exc, Pickler)) from exc
        finally:
            if module is not None:
                cloudpickle.unregister_pickle_by_value(module)
    sources = {
        filename: linecache.getlines(filename)
        for filename in pickler.code_files
        if linecache.getlines(filename)
    }
    return pickle.dumps((sources, data), protocol=5)


def fingerprint(spec: ReplicaSpec) -> str:
    """What a replica runs, the same for each replica of a deployment: its spec (arguments,
    code sent by value, the options a change of which restarts it) and the source of the
    module it is imported from."""
    code = dataclasses.replace(spec, replica_id="", config=spec.config.code_part())
    digest = hashlib.sha256(pickle_spec(code))
    module = sys.modules.get(getattr(spec.target, "__module__", "") or "")
    source = getattr(module, "__file__", None)
    if source is not None and os.path.isfile(source):
        with open(source, "rb") as file:
            digest.update(file.read())
    return digest.hexdigest()[:16]


def load_spec(payload: bytes) -> ReplicaSpec:
    """In the worker: the spec, after registering the source of code that came by value."""
    sources, data = pickle.loads(payload)
    for filename, lines in sources.items():
        if not os.path.exists(filename):  # a script on another machine, a notebook cell
            linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)
    spec: ReplicaSpec = pickle.loads(data)
    return spec


def unshippable_message(spec: ReplicaSpec, exc: Exception, pickler: type) -> str:
    where = find_unpicklable(spec.target, pickler, spec.deployment_name)
    return (
        f"deployment {spec.deployment_name!r} cannot be sent to a worker: {where} cannot be "
        f"pickled ({type(exc).__name__}: {exc}). Define the deployment in a module the "
        "worker can import (not a `__main__` script or a function body), so that the "
        "worker imports it instead of receiving a copy"
    )


def find_unpicklable(root: Any, pickler: type, name: str) -> str:
    """The deepest attribute path under `root` that fails to pickle, for the error."""
    def fails(value: Any) -> bool:
        try:
            pickler(io.BytesIO(), protocol=5).dump(value)
        except Exception:
            return True
        return False

    def children(value: Any) -> list[tuple[str, Any]]:
        if isinstance(value, dict):
            return [(f"[{key!r}]", item) for key, item in value.items()]
        if isinstance(value, (list, tuple, set, frozenset)):
            return [(f"[{i}]", item) for i, item in enumerate(value)]
        if isinstance(value, types.FunctionType):
            names = value.__code__.co_names
            found = [(f".__globals__[{n!r}]", value.__globals__[n]) for n in names
                     if n in value.__globals__]  # fmt: skip
            cells = zip(value.__code__.co_freevars, value.__closure__ or (), strict=False)
            return found + [(f" (closure {n!r})", cell.cell_contents) for n, cell in cells]
        attributes = getattr(value, "__dict__", None)
        if isinstance(attributes, (dict, types.MappingProxyType)):
            return [(f".{key}", item) for key, item in attributes.items()]
        return []

    path, value = name, root
    for _ in range(12):  # deep enough for app.router.routes[0].endpoint.__globals__[...]
        for label, child in children(value):
            if child is not value and fails(child):
                path, value = path + label, child
                break
        else:
            break
    return f"{path} (a {type(value).__module__}.{type(value).__qualname__})"
