"""How code reaches a worker: importable modules are imported there, the rest goes by value.

The apps under `tests/apps/` are ordinary modules, as a user's `main.py` is; the same app
must answer the same on every backend (the `backend` fixture runs each test per backend).
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging
import os
import re
import sys
import time
import traceback
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import asgiserve
from asgiserve.exceptions import ShippingError
from tests.apps import featureful
from tests.conftest import BACKENDS
from tests.servers import LiveServer

FEATUREFUL_FILE = featureful.__file__
TRACEBACK_LINE = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<function>\w+)')


def frames(exc: BaseException) -> list[tuple[str, str]]:
    """(file, function) of every frame named in the exception's text, notes included."""
    text = "".join(traceback.format_exception(exc))
    return [(m["file"], m["function"]) for m in TRACEBACK_LINE.finditer(text)]


@pytest.fixture
def featureful_app(backend: str) -> asgiserve.DeploymentHandle:
    return asgiserve.run(featureful.Featureful.bind(), name="featureful", route_prefix="/f")


# -- the same app on every backend ---------------------------------------------------------


@pytest.mark.parametrize("live", ["uvicorn"], indirect=True)
def test_openapi_is_byte_identical_on_every_backend(
    live: LiveServer, request: pytest.FixtureRequest
) -> None:
    if "ray" in BACKENDS:
        request.getfixturevalue("ray_cluster")
    documents: dict[str, bytes] = {}
    try:
        with live.client() as http:
            for backend in ["inprocess", *(b for b in BACKENDS if b != "inprocess")]:
                asgiserve.run(
                    featureful.Featureful.bind(), name="api", route_prefix="/api", backend=backend
                )
                response = http.get("/api/openapi.json")
                assert response.status_code == 200, response.text
                documents[backend] = response.content
    finally:
        asgiserve.shutdown()
    reference = documents["inprocess"]
    assert b'"example":{}' not in reference and b'"examples":[3]' in reference
    assert b"securitySchemes" in reference and b"/items/{item_id}" in reference
    for backend, document in documents.items():
        assert document == reference, f"/openapi.json differs on the {backend} backend"


def test_module_state_enums_and_pydantic_classes(
    http: httpx.Client, featureful_app: Any, backend: str
) -> None:
    where = http.get("/f/where").json()
    assert where["file"] == FEATUREFUL_FILE
    assert where["loaded_in"] == where["pid"]  # the worker imported the real module
    assert (where["pid"] == os.getpid()) == (backend == "inprocess")

    registry = http.get("/f/registry", params={"x": 4}).json()
    assert registry == {"names": ["double"], "double": 8.0, "same_function": True}

    assert http.get("/f/colors/red").json() == {"color": "red", "is_member": True}
    assert http.get("/f/colors/blue").status_code == 422

    created = http.post("/f/items/", json={"name": "saw", "price": 2.5}, params={"quantity": 2})
    assert created.status_code == 201
    assert created.json() == {"name": "saw", "total": 5.0, "is_item": True}
    assert http.get("/f/items/7", params={"q": "x"}).json() == {
        "item_id": 7, "q": "x", "limit": 10,
    }  # fmt: skip
    assert http.get("/f/plugin/ping").json() == {"pong": "from plugins"}
    assert http.get("/f/sub/").text == "sub app"
    assert http.get("/f/secure", headers={"authorization": "Bearer t"}).json() == {
        "token": "t", "key": None,
    }  # fmt: skip


def test_handle_arguments_and_results_are_the_real_classes(
    featureful_app: asgiserve.DeploymentHandle,
) -> None:
    checked = featureful_app.check.remote(
        featureful.Item(name="a", price=1), featureful.Color.red
    ).result()
    assert checked == {
        "item_is_item": True, "color_is_member": True, "module_file": FEATUREFUL_FILE,
    }  # fmt: skip
    made = featureful_app.make_item.remote("b").result()
    assert type(made) is featureful.Item


def test_an_unpicklable_wsgi_app_is_imported_in_the_worker(
    http: httpx.Client, backend: str
) -> None:
    from tests.apps import wsgi

    asgiserve.run(wsgi.FlaskIngress.bind(), name="flask", route_prefix="/flask")
    answer = http.get("/flask/hello")
    assert answer.status_code == 200
    assert answer.json()["hello"] == "from flask"
    assert (answer.json()["pid"] == os.getpid()) == (backend == "inprocess")


def test_a_module_top_level_deploys_nothing_in_a_worker(http: httpx.Client, backend: str) -> None:
    module = sys.modules.get("tests.apps.toplevel")
    # Imported (again) here, its top level deploys the app on this test's backend.
    module = importlib.reload(module) if module else importlib.import_module("tests.apps.toplevel")
    answer = http.get("/toplevel").json()
    assert answer["echo"] == "via bound handle"
    # Handles the module's top level made reach the server's application from the worker.
    assert answer["module_handle"] == answer["app_handle"] == answer["pid"]
    if backend != "inprocess":
        assert answer["status"] == {"applications": {}}  # the worker deployed nothing
        assert answer["pid"] != os.getpid()
    assert module.echo_handle.echo.remote("here").result() == "here"
    assert sorted(asgiserve.status()["applications"]) == ["toplevel"]


# -- tracebacks ----------------------------------------------------------------------------


def test_tracebacks_name_the_users_file_for_imported_code(
    featureful_app: asgiserve.DeploymentHandle,
) -> None:
    with pytest.raises(LookupError) as info:
        featureful_app.fail.remote().result()
    assert (FEATUREFUL_FILE, "fail") in frames(info.value)
    assert 'raise LookupError("failed in featureful")' in "".join(
        traceback.format_exception(info.value)
    )


def test_tracebacks_name_the_users_file_for_code_sent_by_value(backend: str) -> None:
    @asgiserve.deployment
    class Local:  # a closure: no import path, so it travels by value
        def fail(self) -> None:
            raise ArithmeticError("failed by value")

    handle = asgiserve.run(Local.bind(), name="local", route_prefix=None)
    with pytest.raises(ArithmeticError) as info:
        handle.fail.remote().result()
    assert (__file__, "fail") in frames(info.value)
    assert 'raise ArithmeticError("failed by value")' in "".join(
        traceback.format_exception(info.value)
    )


def test_an_ingress_apps_500_is_its_own_and_logged_with_the_file(
    http: httpx.Client, featureful_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="asgiserve")
    answer = http.get("/f/crash")
    assert answer.status_code == 500
    assert answer.text == "Internal Server Error"  # Starlette's own answer, not ours
    assert answer.headers["content-type"].startswith("text/plain")
    request_id = answer.headers["x-request-id"]

    def logged(level: int) -> list[logging.LogRecord]:
        return [r for r in caplog.records if request_id in r.getMessage() and r.levelno == level]

    # The router logs the error once the answer has gone out, then the access line: wait
    # for that, so that no two threads format tracebacks at once (see test_lifecycle).
    deadline = time.monotonic() + 10
    while not logged(logging.INFO) and time.monotonic() < deadline:
        time.sleep(0.02)
    records = logged(logging.ERROR)
    assert records, "the failure was not logged with its request id"
    assert records[0].exc_info is not None
    assert (FEATUREFUL_FILE, "crash") in frames(records[0].exc_info[1])  # type: ignore[arg-type]
    assert http.get("/f/fail").json() == {"detail": "a teapot"}  # its own HTTPException


# -- what cannot be shipped ----------------------------------------------------------------


def test_an_unshippable_deployment_names_the_object(backend: str) -> None:
    if backend == "inprocess":
        pytest.skip("nothing is pickled in-process")
    target = featureful.Item(name="x", price=1)

    @asgiserve.deployment
    class Holder:  # defined here, so it would travel by value, with its weak reference
        ref = weakref.ref(target)

        def __call__(self) -> str:
            return "never"

    with pytest.raises(ShippingError, match=r"Holder\.ref .*cannot be pickled") as info:
        asgiserve.run(Holder.bind(), name="holder", route_prefix=None)
    assert "module the worker can import" in str(info.value)


# -- resources -----------------------------------------------------------------------------


def open_descriptors() -> int:
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "subprocess"], indirect=True)
def test_event_loops_that_call_a_worker_leave_no_descriptor(
    backend: str, featureful_app: asgiserve.DeploymentHandle
) -> None:
    async def call() -> Any:
        return await featureful_app.make_item.remote("c")

    asyncio.run(call())  # the first loop's channel, and anything made once
    before = open_descriptors()
    for _ in range(50):
        asyncio.run(call())
    assert open_descriptors() <= before + 2


# -- Ray -----------------------------------------------------------------------------------


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A package of the user's own, importable from `tmp_path`."""
    root = tmp_path / "shippedpkg"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "models.py").write_text(
        "import os, sys\n"
        "import asgiserve\n"
        "SEEN = []\n"
        "@asgiserve.deployment\n"
        "class Model:\n"
        "    def where(self):\n"
        "        module = sys.modules.get(__name__)\n"
        "        return {'imported': module is not None and module.Model.target is type(self),\n"
        "                'file': __file__, 'pid': os.getpid()}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("shippedpkg.models")
    yield module
    for name in ("shippedpkg.models", "shippedpkg"):
        sys.modules.pop(name, None)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "inprocess"], indirect=True)
def test_a_package_is_imported_by_reference_in_the_replica(backend: str, package: Any) -> None:
    handle = asgiserve.run(package.Model.bind(), name="pkg", route_prefix=None)
    where = handle.where.remote().result()
    assert where["imported"] is True and where["file"] == package.__file__
    assert where["pid"] != os.getpid()


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "ray"], indirect=True)
def test_ray_falls_back_to_by_value_where_the_node_cannot_import(
    backend: str, package: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from asgiserve.backends import ray as ray_backend
    from asgiserve.shipping import worker_path

    # As on a node without the project: the path the actor gets lacks the package's folder.
    folder = str(Path(package.__file__).parent.parent)
    monkeypatch.setattr(
        ray_backend, "worker_path", lambda: [p for p in worker_path() if p != folder]
    )
    with caplog.at_level(logging.WARNING, logger="asgiserve"):
        handle = asgiserve.run(package.Model.bind(), name="pkg", route_prefix=None)
    where = handle.where.remote().result()
    assert where["imported"] is False  # a copy of the class, not an imported module
    assert any("runtime_env" in record.getMessage() for record in caplog.records)
