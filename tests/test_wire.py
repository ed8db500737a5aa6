"""Frames between the server and a worker: what goes in comes out, buffers and all."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from asgiserve.backends.channel import CALL, END, SEND, plain
from asgiserve.backends.wire import LENGTH, OUT_OF_BAND, decode, encode


def round_trip(frame: Any, owned: bool = False) -> Any:
    """Encode as the channel writes it, decode as it reads it."""
    data = b"".join(bytes(piece) for piece in encode(frame, plain(frame)))
    (length,) = LENGTH.unpack_from(data)
    assert length == len(data) - LENGTH.size
    return decode(memoryview(data)[LENGTH.size :], owned=owned)


def scope(headers: list[tuple[bytes, bytes]], path: str) -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"a=%C3%A9",
        "root_path": "", "headers": headers, "client": ("127.0.0.1", 5), "server": None,
    }  # fmt: skip


def call_frame(headers: list[tuple[bytes, bytes]], path: str, body: Any) -> Any:
    fields = ("id", "asgi", "__call__", (), {}, scope(headers, path), "/", "r#1", "", "")
    return (7, CALL, (None, fields, {"type": "http.request", "body": body, "more_body": False}))


def test_a_plain_exchange_round_trips() -> None:
    headers = [(b"host", b"x"), (b"x-empty", b""), (b"x-bin", bytes(range(256)))]
    call = call_frame(headers, "/caf\u00e9/\U0001f600", b"{}")
    start = {"type": "http.response.start", "status": 200, "headers": headers, "trailers": False}
    body = {"type": "http.response.body", "body": "h\u00e9llo".encode(), "more_body": False}
    for frame in (call, (7, SEND, [start, body]), (7, END, ([], None)), (7, END, ([body], None))):
        assert round_trip(frame) == frame


def test_big_bodies_round_trip() -> None:
    big = bytes(range(256)) * (OUT_OF_BAND // 64)
    for body in (big, bytearray(big)):
        frame = (3, SEND, [{"type": "http.response.body", "body": body, "more_body": True}])
        pieces = encode(frame, plain(frame))
        assert len(pieces) == 1  # only arrays' buffers go out of band
        for owned in (False, True):
            got = round_trip(frame, owned)
            assert got[2][0]["body"] == big and type(got[2][0]["body"]) is type(body)


def test_arrays_and_errors_round_trip() -> None:
    array = np.arange(OUT_OF_BAND, dtype=np.float32)
    frame = (5, END, ([{"type": "asgiserve.result", "value": array}], ValueError("\u00e9")))
    assert len(encode(frame, plain(frame))) == 3  # header, pickle, the array beside it
    messages, error = round_trip(frame, owned=True)[2]
    assert np.array_equal(messages[0]["value"], array)
    assert isinstance(error, ValueError) and error.args == ("\u00e9",)


header = st.tuples(st.binary(max_size=40), st.binary(max_size=200))


@settings(max_examples=200, deadline=None)
@given(
    headers=st.lists(header, max_size=20),
    path=st.text(max_size=50),
    body=st.one_of(
        st.binary(max_size=2000), st.binary(min_size=OUT_OF_BAND, max_size=OUT_OF_BAND + 9)
    ),
    owned=st.booleans(),
)
def test_any_call_round_trips(
    headers: list[tuple[bytes, bytes]], path: str, body: bytes, owned: bool
) -> None:
    frame = call_frame(headers, path, body)
    assert round_trip(frame, owned) == frame
