"""What one task awaits from callbacks on its loop: items in order, woken as each comes.

A future per item would cost an allocation and a callback each; a deque and one waiter,
made only when the task finds nothing to take, cost neither when items come in bunches.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Mailbox(Generic[T]):
    """Put on the loop of the task that gets (hand items over from other threads first)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.items: deque[T] = deque()
        self.waiter: asyncio.Future[None] | None = None

    def put(self, item: T) -> None:
        self.items.append(item)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def get(self) -> T:
        while not self.items:
            self.waiter = self.loop.create_future()
            await self.waiter
        return self.items.popleft()
