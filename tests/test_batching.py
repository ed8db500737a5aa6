"""Dynamic batching and model multiplexing, on every backend, over HTTP and handles."""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import StreamingResponse

import asgiserve


def deployment_status(app: str, name: str) -> dict[str, Any]:
    return asgiserve.status()["applications"][app]["deployments"][name]  # type: ignore[no-any-return]


# -- batching ---------------------------------------------------------------------------


@asgiserve.deployment(max_ongoing_requests=64)
class Doubler:
    """Doubles each item, one vectorised call per batch; remembers the batch sizes."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    @asgiserve.batch(max_batch_size=8, batch_wait_timeout_s=0.2)
    async def double(self, items: list[int]) -> list[int]:
        self.sizes.append(len(items))
        await asyncio.sleep(0.05)
        return [2 * item for item in items]

    async def __call__(self, request: Request) -> int:
        return await self.double(int(request.query_params["x"]))

    def batch_sizes(self) -> list[int]:
        return self.sizes


def test_concurrent_http_requests_share_batches(http: httpx.Client) -> None:
    handle = asgiserve.run(Doubler.bind(), name="doubler", route_prefix="/double")
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda x: http.get("/double", params={"x": x}).json(), range(16)))
    assert answers == [2 * x for x in range(16)]
    sizes = handle.batch_sizes.remote().result()
    assert sum(sizes) == 16 and max(sizes) == 8  # full batches, never more than the limit


def test_batch_queues_show_in_status(http: httpx.Client) -> None:
    fast_checks = Doubler.options(health_check_period_s=0.2)
    asgiserve.run(fast_checks.bind(), name="doubler", route_prefix="/double")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda x: http.get("/double", params={"x": x}), range(8)))
    deadline = time.monotonic() + 15
    queue: dict[str, Any] = {}
    while time.monotonic() < deadline:  # the report comes with each health check
        replica = deployment_status("doubler", "Doubler")["replicas"][0]
        queue = replica.get("batching", {}).get("double", {})
        if queue.get("queued") == 0 and queue.get("running_batches") == 0:
            break
        time.sleep(0.05)
    assert queue["max_batch_size"] == 8 and queue["mean_batch_size"] > 1, queue


def test_a_lone_call_on_an_idle_replica_does_not_wait_the_window(backend: str) -> None:
    handle = asgiserve.run(Doubler.bind(), name="doubler", route_prefix=None)
    handle.double.remote(1).result()  # warm
    started = time.monotonic()
    assert handle.double.remote(21).result() == 42
    assert time.monotonic() - started < 0.15  # the batch takes 0.05 s; the window is 0.2


def test_handle_calls_are_batched(backend: str) -> None:
    handle = asgiserve.run(Doubler.bind(), name="doubler", route_prefix=None)

    async def many() -> list[int]:
        return list(await asyncio.gather(*(handle.double.remote(x) for x in range(20))))

    assert asyncio.run(many()) == [2 * x for x in range(20)]
    assert max(handle.batch_sizes.remote().result()) > 1


@asgiserve.deployment(max_ongoing_requests=16)
class Fragile:
    @asgiserve.batch(max_batch_size=4, batch_wait_timeout_s=0.05)
    async def run(self, items: list[int]) -> list[int]:
        if any(item < 0 for item in items):
            raise ValueError("negative items are not allowed")
        if 99 in items:
            return items[:-1]  # one result short
        await asyncio.sleep(0.3)
        return items

    @asgiserve.batch(max_batch_size=4, batch_wait_timeout_s=0.0)
    def sync_square(self, items: list[int]) -> list[int]:
        return [item * item for item in items]


def test_a_batch_error_fails_every_request_in_it(backend: str) -> None:
    handle = asgiserve.run(Fragile.bind(), name="fragile", route_prefix=None)

    async def batch_with(bad: int) -> list[Any]:
        busy = handle.run.remote(1000)  # runs alone; the next three queue behind it
        await asyncio.sleep(0.1)
        calls = [handle.run.remote(x) for x in (1, 2, bad)]
        await busy
        return list(await asyncio.gather(*calls, return_exceptions=True))

    failed = asyncio.run(batch_with(-1))
    assert all(isinstance(f, ValueError) and "negative" in str(f) for f in failed)
    short = asyncio.run(batch_with(99))
    assert all(isinstance(s, TypeError) for s in short)
    assert "batch of 3 items and returned 2" in str(short[0])


def test_a_sync_batch_method_runs_and_a_list_is_refused(backend: str) -> None:
    handle = asgiserve.run(Fragile.bind(), name="fragile", route_prefix=None)
    assert handle.sync_square.remote(7).result() == 49
    with pytest.raises(TypeError, match="one item, not a list"):
        handle.sync_square.remote([1, 2]).result()


def test_a_call_cancelled_in_a_running_batch_leaves_the_others_alone(backend: str) -> None:
    handle = asgiserve.run(Fragile.bind(), name="fragile", route_prefix=None)

    async def cancel_one_of_eight() -> list[Any]:
        calls = [handle.run.remote(x) for x in range(8)]
        await asyncio.sleep(0.15)  # both batches of four are running
        calls[3].cancel()
        return list(await asyncio.gather(*calls, return_exceptions=True))

    results = asyncio.run(cancel_one_of_eight())
    assert isinstance(
        results[3], asyncio.CancelledError | asgiserve.exceptions.RequestCancelledError
    )
    assert [r for i, r in enumerate(results) if i != 3] == [0, 1, 2, 4, 5, 6, 7]


@asgiserve.deployment(max_ongoing_requests=32)
class Sized:
    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    @asgiserve.batch(
        max_batch_size=8, batch_wait_timeout_s=0.3, batch_size_fn=lambda texts: sum(map(len, texts))
    )
    async def lengths(self, texts: list[str]) -> list[int]:
        self.batches.append(texts)
        await asyncio.sleep(0.3)  # the next items queue meanwhile
        return [len(text) for text in texts]

    @asgiserve.batch(max_batch_size=2, batch_wait_timeout_s=0.3)
    async def pairs(self, items: list[int]) -> list[int]:
        self.batches.append([str(len(items))])
        await asyncio.sleep(0.3)
        return items

    def resize(self, size: int) -> None:
        self.pairs.set_max_batch_size(size)
        self.pairs.set_batch_wait_timeout_s(0.3)

    def seen(self) -> list[list[str]]:
        return self.batches


def test_batches_sized_by_cost_and_resized_at_run_time(backend: str) -> None:
    handle = asgiserve.run(Sized.bind(), name="sized", route_prefix=None)

    async def send(method: Any, items: list[Any]) -> list[Any]:
        busy = method.remote(items[0])  # alone; the rest queue behind it
        await asyncio.sleep(0.05)
        return [await busy, *await asyncio.gather(*(method.remote(i) for i in items[1:]))]

    texts = ["x", "aaaa", "bbbb", "cc", "ddddd"]
    assert asyncio.run(send(handle.lengths, texts)) == [1, 4, 4, 2, 5]
    batches = list(handle.seen.remote().result())  # in-process it is the list itself
    assert all(sum(map(len, batch)) <= 8 for batch in batches)  # by cost, not count
    assert any(len(batch) > 1 for batch in batches)
    handle.resize.remote(4).result()
    assert asyncio.run(send(handle.pairs, list(range(5)))) == list(range(5))
    sizes = [int(size) for [size] in handle.seen.remote().result()[len(batches) :]]
    assert sum(sizes) == 5 and 2 < max(sizes) <= 4  # past the old limit of 2


def test_misuse_is_caught_at_decoration() -> None:
    with pytest.raises(TypeError, match="one argument besides self"):

        class TwoArguments:
            @asgiserve.batch
            async def f(self, a: list[int], b: int) -> list[int]:
                return a

    with pytest.raises(ValueError, match="max_batch_size must be an int of at least 1"):
        asgiserve.batch(max_batch_size=0)
    with pytest.raises(ValueError, match="batch_wait_timeout_s must be a number of at least 0"):
        asgiserve.batch(batch_wait_timeout_s=-1)


@asgiserve.deployment(max_ongoing_requests=32)
class Counter:
    """Streams: each caller counts up to its own item, one step per batch step."""

    @asgiserve.batch(max_batch_size=4, batch_wait_timeout_s=0.1)
    async def count(self, limits: list[int]) -> Any:
        for step in range(max(limits)):
            yield [step if step < limit else StopIteration for limit in limits]
            await asyncio.sleep(0.01)

    async def __call__(self, request: Request) -> StreamingResponse:
        limit = int(request.query_params["n"])

        async def lines() -> Any:
            async for value in self.count(limit):
                yield f"{value}\n"

        return StreamingResponse(lines())


def test_streaming_batches_end_each_callers_stream_on_its_own(http: httpx.Client) -> None:
    handle = asgiserve.run(Counter.bind(), name="counter", route_prefix="/count")
    stream = handle.count.options(stream=True)

    async def both() -> list[list[int]]:
        async def collect(n: int) -> list[int]:
            return [value async for value in stream.remote(n)]

        return list(await asyncio.gather(collect(2), collect(5)))

    assert asyncio.run(both()) == [[0, 1], [0, 1, 2, 3, 4]]
    with ThreadPoolExecutor(2) as pool:
        texts = list(pool.map(lambda n: http.get("/count", params={"n": n}).text, (3, 1)))
    assert texts == ["0\n1\n2\n", "0\n"]


api = FastAPI()


@asgiserve.deployment(max_ongoing_requests=32)
@asgiserve.ingress(api)
class Scorer:
    def __init__(self) -> None:
        self.sizes: list[int] = []

    @asgiserve.batch(max_batch_size=16, batch_wait_timeout_s=0.1)
    async def score(self, texts: list[str]) -> list[int]:
        self.sizes.append(len(texts))
        await asyncio.sleep(0.05)  # requests that come meanwhile form the next batch
        return [len(text) for text in texts]

    @api.get("/score")
    async def route(self, text: str) -> dict[str, Any]:
        return {"score": await self.score(text), "pid": os.getpid()}

    @api.get("/sizes")
    def sizes_route(self) -> list[int]:
        return self.sizes


def test_batching_inside_fastapi_ingress_routes(http: httpx.Client) -> None:
    asgiserve.run(Scorer.bind(), name="scorer", route_prefix="/scorer")
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(
                lambda t: http.get("/scorer/score", params={"text": t}).json(),
                ["a" * n for n in range(8)],
            )
        )
    assert [a["score"] for a in answers] == list(range(8))
    assert max(http.get("/scorer/sizes").json()) > 1


# -- multiplexing -----------------------------------------------------------------------


class Model:
    def __init__(self, model_id: str, unloaded: list[str]) -> None:
        self.model_id = model_id
        self.unloaded = unloaded

    def unload(self) -> None:
        self.unloaded.append(self.model_id)


@asgiserve.deployment(num_replicas=2, max_ongoing_requests=32)
class Models:
    def __init__(self) -> None:
        self.loads: list[str] = []
        self.unloaded: list[str] = []

    @asgiserve.multiplexed(max_num_models_per_replica=2)
    async def get_model(self, model_id: str) -> Model:
        self.loads.append(model_id)
        await asyncio.sleep(0.1)
        if model_id == "broken":
            raise RuntimeError("model 'broken' could not be loaded")
        return Model(model_id, self.unloaded)

    async def __call__(self, request: Request | None = None) -> dict[str, Any]:
        model = await self.get_model(asgiserve.get_multiplexed_model_id())
        return {"model": model.model_id, "pid": os.getpid()}

    def history(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "loads": self.loads, "unloaded": self.unloaded}


def test_requests_go_to_the_replica_that_holds_their_model(http: httpx.Client) -> None:
    handle = asgiserve.run(Models.bind(), name="models", route_prefix="/models")
    served: dict[str, set[int]] = {}
    with ThreadPoolExecutor(16) as pool:
        for header in ("serve_multiplexed_model_id", "ray_serve_multiplexed_model_id"):
            ids = [f"m{i % 4}" for i in range(40)]
            answers = pool.map(lambda m, h=header: http.get("/models", headers={h: m}).json(), ids)
            for model_id, answer in zip(ids, answers, strict=True):
                assert answer["model"] == model_id
                served.setdefault(model_id, set()).add(answer["pid"])
    assert all(len(pids) == 1 for pids in served.values()), served  # no model moved
    histories = {h["pid"]: h for h in (handle.history.remote().result() for _ in range(10))}
    for history in histories.values():
        assert len(history["loads"]) == len(set(history["loads"]))  # each loaded once


def test_a_handle_names_its_model_and_concurrent_first_calls_load_once(backend: str) -> None:
    handle = asgiserve.run(Models.options(num_replicas=1).bind(), name="models", route_prefix=None)
    model = handle.options(multiplexed_model_id="solo")

    async def together() -> list[Any]:
        return list(await asyncio.gather(*(model.remote() for _ in range(10))))

    assert {answer["model"] for answer in asyncio.run(together())} == {"solo"}
    assert handle.history.remote().result()["loads"] == ["solo"]


def test_past_the_limit_the_least_recently_used_model_is_unloaded(backend: str) -> None:
    handle = asgiserve.run(Models.options(num_replicas=1).bind(), name="models", route_prefix=None)
    for model_id in ("a", "b", "a", "c"):  # "b" is the least recently used when "c" comes
        handle.options(multiplexed_model_id=model_id).remote().result()
    history = handle.history.remote().result()
    assert history["loads"] == ["a", "b", "c"] and history["unloaded"] == ["b"]


def test_a_loader_that_raises_fails_the_request_and_caches_nothing(http: httpx.Client) -> None:
    handle = asgiserve.run(
        Models.options(num_replicas=1).bind(), name="models", route_prefix="/models"
    )
    for _ in range(2):
        answer = http.get("/models", headers={"serve_multiplexed_model_id": "broken"})
        assert answer.status_code == 500
    assert handle.history.remote().result()["loads"] == ["broken", "broken"]


@asgiserve.deployment(max_ongoing_requests=32)
class ModelBatches:
    def __init__(self) -> None:
        self.batches: list[tuple[str, list[int]]] = []

    @asgiserve.batch(max_batch_size=8, batch_wait_timeout_s=0.2)
    async def predict(self, items: list[int]) -> list[str]:
        model_id = asgiserve.get_multiplexed_model_id()
        self.batches.append((model_id, items))
        return [f"{model_id}:{item}" for item in items]

    def seen(self) -> list[tuple[str, list[int]]]:
        return self.batches


def test_batches_hold_one_models_requests(backend: str) -> None:
    handle = asgiserve.run(ModelBatches.bind(), name="model-batches", route_prefix=None)

    async def mixed() -> list[str]:
        calls = [
            handle.predict.options(multiplexed_model_id=f"m{i % 2}").remote(i) for i in range(8)
        ]
        return list(await asyncio.gather(*calls))

    assert asyncio.run(mixed()) == [f"m{i % 2}:{i}" for i in range(8)]
    for model_id, items in handle.seen.remote().result():
        assert {f"m{item % 2}" for item in items} == {model_id}


def test_a_call_cancelled_before_its_batch_starts_never_runs(backend: str) -> None:
    handle = asgiserve.run(Sized.bind(), name="sized", route_prefix=None)

    async def cancel_a_queued_one() -> list[Any]:
        busy = handle.lengths.remote("x")  # runs for 0.3 s; the next ones queue
        await asyncio.sleep(0.05)
        calls = [handle.lengths.remote(text) for text in ("aa", "bbb", "c")]
        await asyncio.sleep(0.1)
        calls[1].cancel()
        return list(await asyncio.gather(busy, *calls, return_exceptions=True))

    results = asyncio.run(cancel_a_queued_one())
    assert results[0] == 1 and results[1] == 2 and results[3] == 1
    assert all("bbb" not in batch for batch in handle.seen.remote().result())
