"""`NdArray` and the adapters that turn JSON bodies into numpy arrays.

The body is parsed from raw bytes (pydantic-core's parser) and converted with one
`np.array` call; every check that pydantic would do per element is done on the array
instead (its dtype tells non-numbers apart, numpy rejects ragged lists), so a
1,000 x 1,000 payload costs one parse and one copy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import anyio.to_thread
from pydantic import BaseModel, Field, RootModel, WrapValidator
from starlette.requests import Request

from asgiserve.adapters.body import (
    UnreadJSONBody,
    invalid,
    parse_json,
    read_body,
    require,
    unparsed,
)

if TYPE_CHECKING:
    from numpy import dtype as DType
    from numpy.typing import NDArray

MAX_DIMS = 4  # the nested-list depth the schema allows; `shape` may reshape further
NUMERIC_KINDS = "iufc"  # dtype kinds accepted for `dtype`: signed, unsigned, float, complex
OFFLOAD_BYTES = 1 << 20  # bodies larger than this are decoded in a worker thread

Loc = tuple[str | int, ...]


def seed_schema(schema: dict[str, Any]) -> None:
    """Optional fields as the seeds list them: the plain type, no `null`, no default."""
    plain = {"shape": {"type": "array", "items": {"type": "integer"}}, "dtype": {"type": "string"}}
    for name, kind in plain.items():
        prop = schema["properties"][name]
        prop.pop("anyOf", None)
        prop.pop("default", None)
        prop.update(kind)


class NdArray(BaseModel):
    """Schema for numeric array input."""

    model_config = {"json_schema_extra": seed_schema}

    array: (
        list[float] | list[list[float]] | list[list[list[float]]] | list[list[list[list[float]]]]
    ) = Field(
        description=(
            "The array content as a nested list. You can pass in 1D to 4D array as nested "
            "list, or flatten them. When you flatten the array, you can use the `shape` "
            "parameter to perform reshaping."
        ),
    )
    shape: list[int] | None = Field(
        default=None,
        description="The shape of the array. If present, the array will be reshaped.",
    )
    dtype: str | None = Field(
        default=None,
        description="The numpy dtype of the array. If present, the array will be cast by `astype`.",
    )


class NdArrays(RootModel[dict[str, NdArray]]):
    """Several named arrays: `{"name": NdArray, ...}`."""


# The request bodies as the adapters declare them: documented, never parsed by FastAPI.
NdArrayBody = Annotated[NdArray, WrapValidator(unparsed), UnreadJSONBody()]
NdArraysBody = Annotated[NdArrays, WrapValidator(unparsed), UnreadJSONBody()]


def numpy() -> Any:
    return require("numpy", "numpy")


def to_ndarray(payload: Any, loc: Loc = ("body",), booleans: bool = True) -> NDArray[Any]:
    """An `NdArray`-shaped JSON value (already parsed) to a checked numpy array.

    `booleans=False` skips the search for `true`/`false` among the numbers, for callers
    that know the raw JSON holds neither word.
    """
    if isinstance(payload, NdArray):
        payload = payload.model_dump()
    if not isinstance(payload, dict):
        raise invalid(loc, f"expected a JSON object with an `array` field, got {kind(payload)}")
    if "array" not in payload:
        raise invalid((*loc, "array"), "field required: `array`", "missing")
    arr = nested_to_array(payload["array"], (*loc, "array"), booleans)
    shape, dtype = payload.get("shape"), payload.get("dtype")
    if shape is not None:
        arr = reshape(arr, shape, (*loc, "shape"))
    if dtype is not None:
        arr = cast(arr, dtype, (*loc, "dtype"))
    return arr


def nested_to_array(array: Any, loc: Loc, booleans: bool) -> NDArray[Any]:
    np = numpy()
    if not isinstance(array, list):
        raise invalid(
            loc, f"`array` must be a list of numbers (nested up to 4 deep), got {kind(array)}"
        )
    try:
        arr: NDArray[Any] = np.array(array)
    except ValueError:  # numpy >= 1.24: "inhomogeneous shape"
        raise invalid(
            loc, "ragged nested lists: the lists at each depth must all have the same length"
        ) from None
    # numpy takes true/false mixed with numbers as 1 and 0; JSON Schema's "number" does not
    if arr.dtype.kind not in "iuf" or (booleans and bool_in(array)):
        raise invalid(loc, non_numbers(arr), "type_error")
    if arr.ndim > MAX_DIMS:
        raise invalid(loc, f"`array` has {arr.ndim} dimensions; at most {MAX_DIMS} are accepted")
    return arr


def bool_in(array: Any) -> bool:
    if isinstance(array, list):
        return any(bool_in(item) for item in array)
    return type(array) is bool


def non_numbers(arr: NDArray[Any]) -> str:
    if arr.dtype.kind == "O":
        what = "null, objects, nested lists in the wrong place or integers too large for int64"
    elif arr.dtype.kind in "US":
        what = "strings"
    else:
        what = "true/false"  # from bool_in: the array itself came out numeric
    return f"`array` must hold numbers only; it holds {what}"


def reshape(arr: NDArray[Any], shape: Any, loc: Loc) -> NDArray[Any]:
    if not isinstance(shape, list) or not all(type(n) is int for n in shape):
        raise invalid(loc, f"`shape` must be a list of integers, got {shape!r}"[:200])
    try:
        return arr.reshape(shape)
    except ValueError:
        raise invalid(
            loc, f"`shape` {shape} does not fit the array's {arr.size} elements"
        ) from None


def cast(arr: NDArray[Any], dtype: Any, loc: Loc) -> NDArray[Any]:
    """`astype`, refusing casts that would overflow or truncate without saying so."""
    np = numpy()
    if not isinstance(dtype, str):
        raise invalid(loc, f"`dtype` must be a string such as 'float32', got {kind(dtype)}")
    try:
        target = np.dtype(dtype)
    except Exception:  # numpy parses the string: TypeError, ValueError, SyntaxError...
        raise invalid(loc, f"unknown dtype {dtype!r}"[:200]) from None
    if target.kind not in NUMERIC_KINDS:
        raise invalid(
            loc, f"dtype {dtype!r} is not numeric (use an int, uint, float or complex type)"
        )
    if np.can_cast(arr.dtype, target, casting="safe"):
        return arr.astype(target, copy=False)
    if target.kind in "iu":
        check_integer_range(arr, target, loc)
        return arr.astype(target)
    with np.errstate(over="ignore"):  # overflow is checked just below
        out = arr.astype(target)
    if target.kind in "fc" and arr.size and not np.isfinite(out).all():
        raise invalid(loc, f"values are too large for {target.name}: the cast would overflow")
    return out


def check_integer_range(arr: NDArray[Any], target: DType[Any], loc: Loc) -> None:
    np = numpy()
    if arr.size == 0:
        return
    info = np.iinfo(target)
    low, high = arr.min(), arr.max()
    if arr.dtype.kind == "f":
        if not (np.isfinite(low) and np.isfinite(high)):
            raise invalid(loc, f"non-finite values cannot be cast to {target.name}")
        if (arr % 1).any():
            raise invalid(
                loc, f"values with a fractional part cannot be cast to {target.name} exactly"
            )
    if low < info.min or high > info.max:
        raise invalid(
            loc,
            f"values from {low} to {high} do not fit {target.name} "
            f"({info.min} to {info.max}): the cast would overflow",
        )


def kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def may_hold_booleans(body: bytes) -> bool:
    """A cheap byte search that spares the per-element walk for nearly every body."""
    return b"true" in body or b"false" in body


def decode_ndarray(body: bytes) -> NDArray[Any]:
    """The whole of `json_to_ndarray` on raw bytes: parse, convert, check."""
    return to_ndarray(parse_json(body), booleans=may_hold_booleans(body))


def decode_multi_ndarray(body: bytes) -> dict[str, NDArray[Any]]:
    payload = parse_json(body)
    if not isinstance(payload, dict):
        raise invalid(("body",), f"expected a JSON object of named arrays, got {kind(payload)}")
    booleans = may_hold_booleans(body)
    return {name: to_ndarray(value, ("body", name), booleans) for name, value in payload.items()}


async def decode(body: bytes, decoder: Any) -> Any:
    """Large bodies are decoded in a worker thread, so the event loop keeps serving."""
    if len(body) > OFFLOAD_BYTES:
        return await anyio.to_thread.run_sync(decoder, body)
    return decoder(body)


async def json_to_ndarray(request: Request, payload: NdArrayBody) -> NDArray[Any]:
    """Accepts an NdArray JSON from an HTTP body and converts it to a numpy array."""
    numpy()  # fail with the install hint before reading the body
    return await decode(await read_body(request), decode_ndarray)  # type: ignore[no-any-return]


async def json_to_multi_ndarray(request: Request, payload: NdArraysBody) -> dict[str, NDArray[Any]]:
    """Accepts a JSON of shape {str_key: NdArray} and converts it to dict of arrays."""
    numpy()
    return await decode(await read_body(request), decode_multi_ndarray)  # type: ignore[no-any-return]
