"""A FastAPI app of ordinary size for `start_bench.py`, defined in an importable module."""

from __future__ import annotations

from fastapi import APIRouter, Depends, FastAPI, Query
from pydantic import BaseModel

import asgiserve


class Item(BaseModel):
    name: str
    price: float


def paging(skip: int = 0, limit: int = Query(10, le=100)) -> dict[str, int]:
    return {"skip": skip, "limit": limit}


app = FastAPI(title="start bench")
items = APIRouter(prefix="/items")


@items.get("/")
def list_items(page: dict[str, int] = Depends(paging)) -> dict[str, int]:
    return page


@items.post("/")
def create(item: Item) -> Item:
    return item


app.include_router(items)


@asgiserve.deployment
@asgiserve.ingress(app)
class StartApp:
    def ping(self) -> str:
        return "pong"
