from __future__ import annotations

import pytest

import asgiserve
from asgiserve.config import DEFAULT_MAX_ONGOING_REQUESTS


def test_http_options_defaults_and_the_keep_alive_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ASGISERVE_HTTP_KEEP_ALIVE_TIMEOUT_S", raising=False)
    options = asgiserve.HTTPOptions()
    assert (options.host, options.port, options.keep_alive_timeout_s) == ("127.0.0.1", 8000, 5.0)
    monkeypatch.setenv("ASGISERVE_HTTP_KEEP_ALIVE_TIMEOUT_S", "12")
    assert asgiserve.HTTPOptions(keep_alive_timeout_s=30).keep_alive_timeout_s == 12.0


def test_deployment_option_defaults_and_checks() -> None:
    @asgiserve.deployment
    def f() -> None: ...

    assert f.config.max_ongoing_requests == DEFAULT_MAX_ONGOING_REQUESTS
    # finite, so memory stays bounded; relative, so a queued request waits briefly
    assert f.config.queue_limit == 100
    assert f.options(num_replicas=2, max_ongoing_requests=64).config.queue_limit == 256
    assert f.options(max_queued_requests=7).config.queue_limit == 7
    assert f.options(max_queued_requests=-1).config.queue_limit == -1
    with pytest.raises(ValueError, match="max_ongoing_requests must be at least 1"):
        f.options(max_ongoing_requests=0)
    with pytest.raises(ValueError, match="max_queued_requests must be -1"):
        f.options(max_queued_requests=-2)


def test_backend_choice_order(monkeypatch: pytest.MonkeyPatch) -> None:
    @asgiserve.deployment
    def f() -> None: ...

    monkeypatch.setenv("ASGISERVE_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="unknown backend 'nonsense'"):
        asgiserve.run(f.bind(), route_prefix=None)
    # run(backend=) wins over the environment, and the deployment's own option over both.
    asgiserve.run(f.bind(), name="a", route_prefix=None, backend="inprocess")
    asgiserve.run(f.options(backend="inprocess").bind(), name="b", route_prefix=None)
    router = asgiserve.Router(backend="inprocess")
    asgiserve.run(f.bind(), name="c", route_prefix=None, router=router)
    backends = {
        name: app["deployments"]["f"]["backend"]
        for name, app in asgiserve.status()["applications"].items()
    }
    assert backends == {"a": "inprocess", "b": "inprocess", "c": "inprocess"}
    asgiserve.shutdown()
