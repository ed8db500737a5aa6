"""A FastAPI app that uses most of what FastAPI offers, defined at module level.

Used by `tests/test_shipping.py`: its OpenAPI document must be byte-identical on every
backend, and its answers must rely on module identity (a registry filled at import, an
Enum, pydantic classes checked with isinstance, routes added by another module).
"""

from __future__ import annotations

import enum
import os
import sys
import threading
import weakref
from typing import Annotated

import httpx
from fastapi import APIRouter, Body, Depends, FastAPI, Header, HTTPException, Query, Security
from fastapi.security import APIKeyHeader, HTTPBearer, OAuth2PasswordBearer
from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import asgiserve
from tests.apps import plugins


class Color(enum.StrEnum):
    red = "red"
    green = "green"


class Item(BaseModel):
    name: str = Field(examples=["hammer"])
    price: float = Field(gt=0, description="in euros")
    tags: list[str] = []


class ItemOut(BaseModel):
    name: str
    total: float
    is_item: bool


@plugins.registered("double")
def double(x: float) -> float:
    return 2 * x


LOADED_IN = os.getpid()  # the process that imported this module
LOCK = threading.Lock()  # module state that cannot be pickled: imported, never copied
CLIENT = httpx.Client()  # an open client created at import
SELF_REF = weakref.ref(Color)

oauth2 = OAuth2PasswordBearer(tokenUrl="token")
api_key = APIKeyHeader(name="x-api-key", auto_error=False)
bearer = HTTPBearer(auto_error=False)


def common(q: Annotated[str | None, Query(max_length=20)] = None, limit: int = 10) -> dict:
    return {"q": q, "limit": limit}


app = FastAPI(title="Featureful", version="1.2.3", description="Everything at once")
app.state.lock = LOCK  # what the app holds: none of it could be pickled into a worker
app.state.client = CLIENT
app.state.ref = SELF_REF
items = APIRouter(prefix="/items", tags=["items"])


@items.post("/", response_model=ItemOut, status_code=201)
def create_item(
    item: Annotated[
        Item, Body(examples=[{"name": "hammer", "price": 9.5, "tags": ["tools"]}])
    ],
    quantity: Annotated[int, Query(examples=[3])] = 1,
) -> ItemOut:
    return ItemOut(name=item.name, total=item.price * quantity, is_item=isinstance(item, Item))


@items.get("/{item_id}")
def read_item(
    item_id: int,
    params: Annotated[dict, Depends(common)],
    user_agent: Annotated[str | None, Header()] = None,
) -> dict:
    return {"item_id": item_id, **params}


@app.get("/colors/{color}")
def color(color: Color) -> dict:
    return {"color": color.value, "is_member": color is Color[color.name]}


@app.get("/secure")
def secure(
    token: Annotated[str, Depends(oauth2)],
    key: Annotated[str | None, Security(api_key)] = None,
) -> dict:
    return {"token": token, "key": key}


@app.get("/bearer")
def with_bearer(credentials: Annotated[object, Depends(bearer)]) -> dict:
    return {"given": credentials is not None}


@app.get("/registry")
def registry(x: float = 1.0) -> dict:
    return {
        "names": sorted(plugins.REGISTRY),
        "double": plugins.REGISTRY["double"](x),
        "same_function": plugins.REGISTRY["double"] is sys.modules[__name__].double,
    }


@app.get("/where")
def where() -> dict:
    return {"pid": os.getpid(), "loaded_in": LOADED_IN, "file": __file__}


@app.get("/fail")
def fail() -> None:
    raise HTTPException(status_code=418, detail="a teapot")


@app.get("/crash")
def crash() -> None:
    raise ValueError("crash in featureful")


def sub_root(request: object) -> PlainTextResponse:
    return PlainTextResponse("sub app")


app.include_router(items)
app.mount("/sub", Starlette(routes=[Route("/", sub_root)]))
plugins.add_health_routes(app)


@asgiserve.deployment
@asgiserve.ingress(app)
class Featureful:
    """The app served as it is, plus handle methods that check identity."""

    def check(self, item: Item, color: Color) -> dict:
        return {
            "item_is_item": isinstance(item, Item),
            "color_is_member": color is Color.red,
            "module_file": sys.modules[__name__].__file__,
        }

    def make_item(self, name: str) -> Item:
        return Item(name=name, price=1.0)

    def fail(self) -> None:
        raise LookupError("failed in featureful")
