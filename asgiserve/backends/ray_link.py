"""The server's side of one actor: the calls ready in one turn of the loop, in one actor call.

Each actor call costs the server a Ray task submission, whatever it carries: about a fifth
of a busy server's time went there when each request was its own. So calls for one actor
wait in `Link.ready` until the end of the current loop turn (`call_soon`), and go together
in one `begin` call; a lone call goes at the same moment, so nothing waits for a batch to
fill. `begin` returns as soon as one of its calls has news, with the news of all (for
small requests, their whole responses); the calls still running continue in one `more`
streaming generator, each item holding the news of whichever has some (a chunk of a
stream, a slower handler's response), so no call waits for another.
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
from collections.abc import Callable
from typing import Any

from ray.exceptions import RayActorError
from starlette.types import Message

from asgiserve.backends.base import Call
from asgiserve.backends.mailbox import Mailbox

News = tuple[list[Message], bool, BaseException | None]  # messages, finished, error


def pack(values: list[Any]) -> bytes | list[Any]:
    """What crosses in one actor call, pickled here where plain pickle can take it.

    Ray serializes arguments with cloudpickle and a hook per object, which made one HTTP
    call's arguments (a scope, a message: builtins) cost a third of Ray's round trip;
    C pickle takes them in a fraction of that. What it cannot take (handle arguments:
    lambdas, classes of `__main__`, object refs) goes to Ray as it is.
    """
    if all(call.kind == "asgi" for _, call, _ in values):
        with contextlib.suppress(Exception):
            return pickle.dumps(values, 5)
    return values


class Inbox(Mailbox[News]):
    """One call's news as the actor sends it, for the task awaiting the call."""

    ended = False  # its last news has come

    def put(self, news: News) -> None:
        self.ended = self.ended or news[1]
        super().put(news)

    def fail(self, error: BaseException) -> None:
        """The call's batch failed (its actor died) before the call ended."""
        self.put(([], True, error))


class Link:
    """The calls on one loop for one actor: sent together, their news handed out."""

    def __init__(self, actor: Any, died: Callable[[BaseException], BaseException]) -> None:
        self.actor = actor
        self.died = died  # the replica marks itself dead, and says so in the error it returns
        self.ready: dict[str, tuple[str, Call, Message | None]] = {}
        self.inboxes: dict[str, Inbox] = {}
        self.readers: set[asyncio.Task[None]] = set()

    def send(self, key: str, call: Call, first: Message | None) -> Inbox:
        """Queue the call for this loop turn's `begin`; its news arrives in the inbox."""
        loop = asyncio.get_running_loop()  # not kept: links are found by their loop, weakly
        if not self.ready:
            loop.call_soon(self.flush)
        self.ready[key] = (key, call, first)
        inbox = self.inboxes[key] = Inbox(loop)
        return inbox

    def unsent(self, key: str) -> bool:
        """Take back a call not sent yet (cancelled within its first loop turn)."""
        return self.ready.pop(key, None) is not None

    def forget(self, key: str) -> None:
        self.inboxes.pop(key, None)

    def flush(self) -> None:
        calls, self.ready = list(self.ready.values()), {}
        if not calls:
            return
        try:
            first = self.actor.begin.remote(pack(calls))
        except Exception as exc:  # an argument Ray cannot serialize: it fails its own call
            if len(calls) == 1:
                self.fail([calls[0][0]], exc)
                return
            for call in calls:
                self.ready = {call[0]: call}
                self.flush()
            return
        reader = asyncio.get_running_loop().create_task(self.read(first, calls))
        self.readers.add(reader)
        reader.add_done_callback(self.readers.discard)

    async def read(self, first: Any, calls: list[tuple[str, Call, Message | None]]) -> None:
        """`begin`'s answer, then `more` for the calls it left running, till they end."""
        keys = [key for key, _, _ in calls]
        try:
            keys = self.hand_out(await first, keys)
            if keys:
                async for item in self.actor.more.remote(keys):
                    keys = self.hand_out(await item, keys)
        except RayActorError as exc:
            self.fail(keys, self.died(exc))
        except Exception as exc:  # noqa: BLE001 - every call of the batch gets to see it
            self.fail(keys, exc)

    def hand_out(self, news: bytes | list[Any], keys: list[str]) -> list[str]:
        """Give each call its news; the keys of those still running that someone awaits."""
        entries: list[Any] = pickle.loads(news) if isinstance(news, bytes) else news
        for key, messages, done, error in entries:
            inbox = self.inboxes.get(key)
            if inbox is None:
                continue  # its caller was cancelled and has gone
            if isinstance(messages, bytes):  # user values: pickled by the actor
                messages, error = pickle.loads(messages)
            inbox.put((messages, done, error))
        return [key for key in keys if key in self.inboxes and not self.inboxes[key].ended]

    def fail(self, keys: list[str], error: BaseException) -> None:
        for key in keys:
            inbox = self.inboxes.get(key)
            if inbox is not None:
                inbox.fail(error)
