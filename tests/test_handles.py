from __future__ import annotations

import asyncio
import pickle
import subprocess
import sys
import textwrap
import traceback
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

import asgiserve
from asgiserve.exceptions import DeploymentUnavailableError
from tests.servers import serve


@asgiserve.deployment
class Calculator:
    def __init__(self, offset: int = 0) -> None:
        self.offset = offset
        self.count = 0

    def __call__(self, x: int) -> int:
        return x + self.offset

    def method1(self, arg: str) -> str:
        return f"Method1: {arg}"

    async def double(self, x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    def increment(self, inc: int) -> int:
        self.count += inc
        return self.count

    def fail(self) -> None:
        raise KeyError("no such thing")

    def numbers(self, n: int):  # type: ignore[no-untyped-def]
        yield from range(n)

    async def async_numbers(self, n: int):  # type: ignore[no-untyped-def]
        for i in range(n):
            await asyncio.sleep(0)
            yield i


def test_remote_and_other_methods(backend: str) -> None:
    handle = asgiserve.run(Calculator.bind(10), route_prefix=None)
    assert handle.remote(1).result() == 11
    assert handle.method1.remote("hi").result() == "Method1: hi"
    assert handle.options(method_name="increment").remote(5).result() == 5
    assert handle.increment.remote(2).result() == 7
    assert handle.double.remote(21).result(timeout_s=10) == 42


@pytest.mark.anyio
async def test_await_in_async_code(backend: str) -> None:
    handle = asgiserve.run(Calculator.bind(1), route_prefix=None)
    assert await handle.remote(1) == 2
    assert await asyncio.gather(*(handle.double.remote(i) for i in range(10))) == [
        2 * i for i in range(10)
    ]
    with pytest.raises(RuntimeError, match="use `await response`"):
        handle.remote(1).result()


def test_exceptions_carry_the_replica_traceback(backend: str) -> None:
    handle = asgiserve.run(Calculator.bind(), route_prefix=None)
    with pytest.raises(KeyError, match="no such thing") as info:
        handle.fail.remote().result()
    text = "".join(traceback.format_exception(info.value))
    assert "in fail" in text and 'raise KeyError("no such thing")' in text


def test_unknown_method_is_a_clear_error(backend: str) -> None:
    handle = asgiserve.run(Calculator.bind(), route_prefix=None)
    with pytest.raises(AttributeError, match="has no method 'nope'"):
        handle.nope.remote().result()


def test_result_timeout(backend: str) -> None:
    @asgiserve.deployment
    class Slow:
        async def __call__(self) -> None:
            await asyncio.sleep(30)

    handle = asgiserve.run(Slow.bind(), route_prefix=None)
    response = handle.remote()
    with pytest.raises(TimeoutError):
        response.result(timeout_s=0.05)
    response.cancel()


@asgiserve.deployment
class Adder:
    def __init__(self, increment: int) -> None:
        self.increment = increment

    def __call__(self, x: int) -> int:
        return x + self.increment


@asgiserve.deployment
class Combiner:
    def __init__(self, first: asgiserve.DeploymentHandle, others: list) -> None:  # type: ignore[type-arg]
        self.first = first
        self.others = others

    async def __call__(self, x: int) -> list[int]:
        chained = self.others[0].remote(self.first.remote(x))  # a response as an argument
        return [await self.first.remote(x), await chained]


def test_composition_and_chaining(backend: str) -> None:
    handle = asgiserve.run(Combiner.bind(Adder.bind(1), [Adder.bind(100)]), route_prefix=None)
    assert handle.remote(1).result() == [2, 102]
    deployments = asgiserve.status()["applications"]["default"]["deployments"]
    assert sorted(deployments) == ["Adder", "Adder_1", "Combiner"]


def test_chaining_from_the_caller(backend: str) -> None:
    first = asgiserve.run(Adder.bind(1), name="first", route_prefix=None)
    second = asgiserve.run(Adder.bind(10), name="second", route_prefix=None)
    assert second.remote(first.remote(1)).result() == 12


def test_handles_pickle_and_getters(backend: str) -> None:
    asgiserve.run(Calculator.bind(5), name="calc", route_prefix=None)
    handle = pickle.loads(pickle.dumps(asgiserve.get_app_handle("calc")))
    assert handle.remote(1).result() == 6
    by_name = asgiserve.get_deployment_handle("Calculator", app_name="calc")
    assert by_name.method1.remote("x").result() == "Method1: x"
    with pytest.raises(DeploymentUnavailableError, match="no application named 'nope'"):
        asgiserve.get_app_handle("nope")
    asgiserve.delete("calc")
    with pytest.raises(DeploymentUnavailableError):
        handle.remote(1).result()


def test_streaming_with_plain_for(backend: str) -> None:
    handle = asgiserve.run(Calculator.bind(), route_prefix=None)
    assert list(handle.options(stream=True).numbers.remote(5)) == [0, 1, 2, 3, 4]
    assert list(handle.options(stream=True, method_name="async_numbers").remote(3)) == [0, 1, 2]
    with pytest.raises(TypeError, match="stream=True"):
        handle.numbers.remote(2).result()


@pytest.mark.anyio
async def test_streaming_with_async_for(backend: str) -> None:
    handle = asgiserve.run(Calculator.bind(), route_prefix=None)
    items = [item async for item in handle.options(stream=True).async_numbers.remote(4)]
    assert items == [0, 1, 2, 3]


def test_handles_inside_the_users_fastapi_endpoints(backend: str) -> None:
    handle = asgiserve.run(Calculator.bind(), name="calc", route_prefix=None)
    app = FastAPI()

    @app.get("/double/{x}")
    async def double(x: int) -> int:
        return await handle.double.remote(x)  # type: ignore[no-any-return]

    @app.get("/sync/{x}")
    def sync_endpoint(x: int) -> int:  # runs in a worker thread: .result() is fine there
        return handle.remote(x).result()  # type: ignore[no-any-return]

    with serve(app) as server, server.client() as client:
        assert client.get("/double/21").json() == 42
        assert client.get("/sync/3").json() == 3


def test_same_deployment_over_http_and_python(http: httpx.Client) -> None:
    @asgiserve.deployment
    class Greeter:
        def say_hello(self, name: str) -> str:
            return f"Hello {name}!"

        def __call__(self, request):  # type: ignore[no-untyped-def]
            return self.say_hello(request.query_params["name"])

    handle = asgiserve.run(Greeter.bind(), route_prefix="/api")
    assert http.get("/api?name=Alice").text == "Hello Alice!"
    assert handle.say_hello.remote("Alice").result() == "Hello Alice!"


def test_plain_synchronous_script_without_a_server(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            """
            import asgiserve

            @asgiserve.deployment(num_replicas=2)
            class Deployment:
                def method1(self, arg):
                    return f"Method1: {arg}"

                def __call__(self, arg):
                    return f"__call__: {arg}"

            handle = asgiserve.run(Deployment.bind())
            print(handle.remote("hi").result())
            print(handle.method1.remote("hi").result())
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.splitlines() == ["__call__: hi", "Method1: hi"]


def test_constructor_error_fails_run_with_the_users_traceback(backend: str) -> None:
    @asgiserve.deployment
    class Broken:
        def __init__(self) -> None:
            raise RuntimeError("model file missing")

    with pytest.raises(RuntimeError, match="model file missing") as info:
        asgiserve.run(Broken.bind(), name="broken")
    assert "in __init__" in "".join(traceback.format_exception(info.value))
    assert "broken" not in asgiserve.status()["applications"]


def test_calling_a_deployment_directly_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match="cannot be called directly"):
        Calculator()


def test_options_and_unknown_options() -> None:
    copy = Calculator.options(num_replicas=3, name="Calc3")
    assert (copy.name, copy.config.num_replicas, Calculator.config.num_replicas) == ("Calc3", 3, 1)
    with pytest.raises(TypeError, match="unknown deployment option"):
        Calculator.options(num_replica=3)
    with pytest.raises(ValueError, match="num_replicas must be at least 1"):
        Calculator.options(num_replicas=0)


def test_a_deployment_passed_without_bind_is_caught_at_bind_time() -> None:
    @asgiserve.deployment
    class Inner:
        pass

    @asgiserve.deployment
    class Outer:
        def __init__(self, inner: object = None, models: object = None) -> None:
            pass

    expected = r"Outer.bind\(\) was given the deployment 'Inner' itself; bind it too, as Inner"
    with pytest.raises(TypeError, match=expected):
        Outer.bind(Inner)
    with pytest.raises(TypeError, match=expected):
        Outer.bind(models={"a": [Inner]})
    assert Outer.bind(Inner.bind()).args[0].deployment is Inner


def test_run_binds_a_bare_deployment_and_names_bind_when_it_needs_arguments() -> None:
    @asgiserve.deployment
    class Bare:
        def __call__(self) -> str:
            return "bare"

    @asgiserve.deployment
    class Needs:
        def __init__(self, size: int) -> None:
            self.size = size

    try:
        handle = asgiserve.run(Bare, name="bare", route_prefix=None, backend="inprocess")
        assert handle.remote().result() == "bare"  # as asgiserve.run(Bare.bind())
        with pytest.raises(TypeError, match=r"bind them first: asgiserve.run\(Needs.bind\(...\)\)"):
            asgiserve.run(Needs, name="needs", route_prefix=None, backend="inprocess")
    finally:
        asgiserve.shutdown()
