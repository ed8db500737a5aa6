"""`asgiserve.adapters` as `Depends(...)` in the user's own FastAPI app, over real servers.

No `from __future__ import annotations`: FastAPI resolves endpoint annotations against
this module's globals (see test_ingress.py).
"""

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import Depends, FastAPI

import asgiserve.adapters.image as image_module
from asgiserve.adapters import (
    NdArray,
    image_to_ndarray,
    json_request,
    json_to_multi_ndarray,
    json_to_ndarray,
    pandas_read_json,
    starlette_request,
)
from asgiserve.adapters.image import image_adapter
from tests.servers import SERVERS, serve

# The seed's "Show JSON schema" listing for NdArray, as printed there.
SEED_NDARRAY_SCHEMA = json.loads("""
{
   "title": "NdArray",
   "description": "Schema for numeric array input.",
   "type": "object",
   "properties": {
      "array": {
         "title": "Array",
         "description": "The array content as a nested list. You can pass in 1D to 4D array as nested list, or flatten them. When you flatten the array, you can use the `shape` parameter to perform reshaping.",
         "anyOf": [
            {"type": "array", "items": {"type": "number"}},
            {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
            {"type": "array", "items": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}},
            {"type": "array", "items": {"type": "array", "items": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}}}
         ]
      },
      "shape": {
         "title": "Shape",
         "description": "The shape of the array. If present, the array will be reshaped.",
         "type": "array",
         "items": {"type": "integer"}
      },
      "dtype": {
         "title": "Dtype",
         "description": "The numpy dtype of the array. If present, the array will be cast by `astype`.",
         "type": "string"
      }
   },
   "required": ["array"]
}
""")  # noqa: E501


def describe(arr: np.ndarray) -> dict[str, Any]:
    return {"shape": list(arr.shape), "dtype": str(arr.dtype), "values": arr.tolist()}


def user_app() -> FastAPI:
    """The seeds' "Embedded in your existing FastAPI Application", one route per adapter."""
    app = FastAPI()

    @app.post("/ndarray")
    async def ndarray(arr: np.ndarray = Depends(json_to_ndarray)) -> dict[str, Any]:
        return describe(arr)

    @app.post("/multi")
    async def multi(arrays: dict = Depends(json_to_multi_ndarray)) -> dict[str, Any]:
        return {name: describe(arr) for name, arr in arrays.items()}

    @app.post("/image")
    def image(arr: np.ndarray = Depends(image_to_ndarray)) -> dict[str, Any]:
        return {"shape": list(arr.shape), "dtype": str(arr.dtype)}

    @app.post("/small-image")
    def small_image(arr: np.ndarray = Depends(image_adapter(max_pixels=100))) -> list[int]:
        return list(arr.shape)

    @app.post("/pandas")
    async def pandas(df: Any = Depends(pandas_read_json)) -> Any:
        return json.loads(df.to_json(orient="split"))

    @app.post("/json")
    async def as_json(body: Any = Depends(json_request)) -> Any:
        return {"got": body}

    @app.get("/request")
    async def request(req: Any = Depends(starlette_request)) -> dict[str, Any]:
        return {"path": req.url.path, "query": dict(req.query_params)}

    return app


@pytest.fixture(scope="module", params=SERVERS)
def client(request: pytest.FixtureRequest) -> Iterator[httpx.Client]:
    with serve(user_app(), request.param) as server, server.client() as client:
        yield client


def png(width: int, height: int, noise: bool = False) -> bytes:
    from PIL import Image

    if noise:
        pixels = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
    else:
        image = Image.new("RGB", (width, height), (10, 20, 30))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def problem(response: httpx.Response) -> str:
    """The 422's message(s), one string, for `in` checks."""
    assert response.status_code == 422, response.text
    return " | ".join(item["msg"] for item in response.json()["detail"])


# -- NdArray -------------------------------------------------------------------------------


def test_ndarray_schema_matches_the_seed() -> None:
    assert NdArray.model_json_schema() == SEED_NDARRAY_SCHEMA


def test_openapi_request_bodies(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    assert spec["components"]["schemas"]["NdArray"] == SEED_NDARRAY_SCHEMA
    body = spec["paths"]["/ndarray"]["post"]["requestBody"]
    # What a plain `payload: NdArray` body parameter would declare.
    assert body == {
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/NdArray"}}},
        "required": True,
    }
    multi = spec["paths"]["/multi"]["post"]["requestBody"]["content"]["application/json"]
    multi_schema = spec["components"]["schemas"][multi["schema"]["$ref"].rpartition("/")[2]]
    assert multi_schema["additionalProperties"] == {"$ref": "#/components/schemas/NdArray"}
    image = spec["paths"]["/image"]["post"]["requestBody"]["content"]
    assert list(image) == ["multipart/form-data"]
    params = {p["name"] for p in spec["paths"]["/pandas"]["post"]["parameters"]}
    assert {"orient", "typ", "lines", "dtype", "convert_dates"} <= params
    assert "application/json" in spec["paths"]["/json"]["post"]["requestBody"]["content"]


# -- json_to_ndarray ----------------------------------------------------------------------


def test_seed_example_values(client: httpx.Client) -> None:
    response = client.post("/ndarray", json={"array": [[1, 2], [2, 3]]})
    assert response.json() == {"shape": [2, 2], "dtype": "int64", "values": [[1, 2], [2, 3]]}


@pytest.mark.parametrize(
    ("payload", "shape", "dtype"),
    [
        ({"array": [1.5, 2]}, [2], "float64"),
        ({"array": [1, 2, 3, 4], "shape": [2, 2]}, [2, 2], "int64"),
        ({"array": [1, 2, 3, 4], "shape": [-1, 2], "dtype": "float32"}, [2, 2], "float32"),
        ({"array": [1.0, 2.0], "dtype": "int8"}, [2], "int8"),
        ({"array": [[[[1]]]]}, [1, 1, 1, 1], "int64"),
        ({"array": []}, [0], "float64"),
        ({"array": [1, 2], "shape": None, "dtype": None}, [2], "int64"),
    ],
)
def test_ndarray_accepts(client: httpx.Client, payload: Any, shape: list[int], dtype: str) -> None:
    response = client.post("/ndarray", json=payload)
    assert response.status_code == 200, response.text
    assert response.json()["shape"] == shape
    assert response.json()["dtype"] == dtype


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"array": [[1, 2], [3]]}, "ragged nested lists"),
        ({"array": [[[[[1]]]]]}, "has 5 dimensions; at most 4"),
        ({"array": [1, 2, 3], "shape": [2, 2]}, "`shape` [2, 2] does not fit the array's 3"),
        ({"array": [1], "shape": ["2"]}, "`shape` must be a list of integers"),
        ({"array": [1], "dtype": "float99"}, "unknown dtype 'float99'"),
        ({"array": [1], "dtype": "str"}, "dtype 'str' is not numeric"),
        ({"array": [1], "dtype": "datetime64[s]"}, "is not numeric"),
        ({"array": ["a", 1]}, "numbers only; it holds strings"),
        ({"array": [1, None]}, "numbers only; it holds null"),
        ({"array": [1, {"a": 1}]}, "numbers only"),
        ({"array": [1, True]}, "numbers only; it holds true/false"),
        ({"array": [[1.5], [False]]}, "numbers only; it holds true/false"),
        ({"array": [1e10], "dtype": "int32"}, "do not fit int32"),
        ({"array": [300], "dtype": "uint8"}, "do not fit uint8"),
        ({"array": [-1], "dtype": "uint16"}, "do not fit uint16"),
        ({"array": [1.5], "dtype": "int64"}, "fractional part"),
        ({"array": [1e300], "dtype": "float32"}, "too large for float32"),
        ({"array": 5}, "`array` must be a list"),
        ({"shape": [1]}, "field required: `array`"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_ndarray_rejects(client: httpx.Client, payload: Any, message: str) -> None:
    assert message in problem(client.post("/ndarray", json=payload))


def test_ndarray_rejects_bad_json_and_form_bodies(client: httpx.Client) -> None:
    headers = {"content-type": "application/json"}
    assert "invalid JSON" in problem(client.post("/ndarray", content=b"{bad", headers=headers))
    assert "body is empty" in problem(client.post("/ndarray", content=b"", headers=headers))
    assert "invalid JSON" in problem(
        client.post("/ndarray", content=b'{"array": [1, 2', headers=headers)
    )
    assert "expected a JSON body" in problem(client.post("/ndarray", data={"array": "1"}))


def test_large_payload_round_trip(client: httpx.Client) -> None:
    """Over the worker-thread threshold: the same result as for a small body."""
    arr = np.random.default_rng(1).random((300, 1000))
    response = client.post("/ndarray", json={"array": arr.tolist()})
    assert response.status_code == 200
    assert np.array_equal(np.array(response.json()["values"]), arr)


def test_multi_ndarray(client: httpx.Client) -> None:
    response = client.post(
        "/multi", json={"a": {"array": [1, 2]}, "b": {"array": [0.5, 1, 2, 3], "shape": [2, 2]}}
    )
    assert response.json() == {
        "a": {"shape": [2], "dtype": "int64", "values": [1, 2]},
        "b": {"shape": [2, 2], "dtype": "float64", "values": [[0.5, 1.0], [2.0, 3.0]]},
    }
    bad = client.post("/multi", json={"a": {"array": [1]}, "b": {"array": [[1], [1, 2]]}})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["body", "b", "array"]
    assert "named arrays" in problem(client.post("/multi", json=[1]))


# -- image_to_ndarray -----------------------------------------------------------------------


def test_image(client: httpx.Client) -> None:
    response = client.post("/image", files={"img": ("a.png", png(4, 3), "image/png")})
    assert response.json() == {"shape": [3, 4, 3], "dtype": "uint8"}


def test_image_rejects_non_images_and_truncated_files(client: httpx.Client) -> None:
    not_image = client.post("/image", files={"img": ("a.png", b"not an image", "image/png")})
    assert "not an image" in problem(not_image)
    data = png(64, 64, noise=True)
    truncated = client.post("/image", files={"img": ("a.png", data[: len(data) // 2])})
    assert "could not decode the image" in problem(truncated)
    assert problem(client.post("/image")).startswith("Field required")


def test_image_pixel_limit(client: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    # A 12,000 x 12,000 PNG of one colour is ~200 kB and would decode to 432 MB.
    bomb = png(12_000, 12_000)
    assert len(bomb) < 1_000_000
    message = problem(client.post("/image", files={"img": ("bomb.png", bomb)}))
    assert "image too large: 12000 x 12000 = 144000000 pixels, the limit is 50000000" in message
    assert "limit is 100" in problem(client.post("/small-image", files={"img": ("a", png(20, 20))}))
    assert client.post("/small-image", files={"img": ("a", png(10, 10))}).json() == [10, 10, 3]
    monkeypatch.setattr(image_module, "MAX_IMAGE_PIXELS", 11)  # read on every call
    assert "limit is 11" in problem(client.post("/image", files={"img": ("a", png(4, 3))}))


# -- pandas_read_json ---------------------------------------------------------------------


def test_pandas(client: httpx.Client) -> None:
    records = [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    response = client.post("/pandas?orient=records", json=records)
    assert response.json() == {"columns": ["a", "b"], "index": [0, 1], "data": [[1, "x"], [2, "y"]]}
    lines = b'{"a": 1}\n{"a": 2}\n'
    response = client.post("/pandas?lines=true&orient=records", content=lines)
    assert response.json()["data"] == [[1], [2]]


def test_pandas_rejects_unlisted_options_and_bad_json(client: httpx.Client) -> None:
    message = problem(client.post("/pandas?storage_options=x&chunksize=1", json=[]))
    assert "chunksize, storage_options" in message
    assert "orient, typ, dtype" in message  # names the allowed ones
    assert problem(client.post("/pandas?orient=sideways", json=[])).startswith("Input should be")
    assert "pandas could not read" in problem(client.post("/pandas?orient=split", json=[1, 2]))
    assert "pandas could not read" in problem(
        client.post("/pandas", content=b"{nope", headers={"content-type": "application/json"})
    )


# -- json_request, starlette_request --------------------------------------------------------


def test_json_and_starlette_request(client: httpx.Client) -> None:
    assert client.post("/json", json={"a": [1, 2]}).json() == {"got": {"a": [1, 2]}}
    headers = {"content-type": "application/json"}
    assert client.post("/json", content=b"null", headers=headers).json() == {"got": None}
    assert "invalid JSON" in problem(client.post("/json", content=b"nope", headers=headers))
    assert client.get("/request?a=1").json() == {"path": "/request", "query": {"a": "1"}}


def test_pydantic_model_in_the_same_app_still_validates() -> None:
    """A user's own `payload: NdArray` body parameter is validated by pydantic as usual."""
    from fastapi.testclient import TestClient

    app = FastAPI()

    @app.post("/")
    def plain(payload: NdArray) -> list[int]:
        return [len(payload.array)]

    with TestClient(app) as test_client:
        assert test_client.post("/", json={"array": [1, 2]}).json() == [2]
        assert test_client.post("/", json={"array": ["x"]}).status_code == 422


def test_import_asgiserve_loads_no_heavy_package() -> None:
    code = (
        "import sys, asgiserve; "
        "print([m for m in ('numpy', 'PIL', 'pandas', 'fastapi', 'pydantic') if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr


def test_missing_optional_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from asgiserve.adapters.body import require

    monkeypatch.setitem(sys.modules, "pandas", None)  # makes `import pandas` fail
    both = r"pip install 'asgiserve\[pandas\]' \(or, in a checkout: pip install -e '.\[pandas\]'\)"
    with pytest.raises(ImportError, match=both):
        require("pandas", "pandas")
