"""How the server shares one machine: a bounded queue in front of N generation slots,
blocking model code run off the event loop, and Server-Sent Events.

A generation (one request, all its choices or images) holds a slot while it runs. Up to
`queue` more requests wait for a slot; the next one is answered 429 with Retry-After at
once, so a flood never piles up unbounded work. On a CPU one slot is usually right: a
generation already uses every core, and two at once only make both slower.

Text on an engine that batches is the exception (text/batching.py): up to `batch` text
generations run at once in a pool of their own, sharing each forward pass, so they are
faster together than one after another, and an image job does not hold them up.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from genlab.server.protocol import APIError

_END = object()


@dataclass
class Counters:
    """What the server has done, for tests and the load benchmark (GET /v1/genlab/stats)."""

    started: int = 0
    finished: int = 0
    cancelled: int = 0  # stopped early because the client went away
    failed: int = 0
    rejected: int = 0  # answered 429


class Admission:
    def __init__(self, concurrency: int, queue: int):
        self.concurrency, self.queue = concurrency, queue
        self.batch = 0  # the batch pool's slots: --batch, set by the model loader once a model batches
        self.inside = 0  # running + waiting
        self.counters = Counters()
        self._pools: dict[str, asyncio.Semaphore] = {}  # made on first use, inside the server's event loop

    def ticket(self, batched: bool = False) -> "Ticket":
        """Claim a place in the queue now, or refuse with 429 if it is full. `batched`: a text generation
        on a batching engine, which takes a slot of the batch pool."""
        running = self.concurrency + self.batch
        if self.inside >= running + self.queue:
            self.counters.rejected += 1
            raise APIError(429, f"the server is busy: {running} generation(s) running and {self.queue} waiting, "
                                "which is its limit (--concurrency, --batch, --queue); retry shortly",
                           type="rate_limit_error", code="server_busy", headers={"Retry-After": "1"})
        self.inside += 1
        return Ticket(self, "batch" if batched and self.batch else "one")


class Ticket:
    """One request's place: `async with ticket.slot():` waits for a slot of its pool; release() frees the place."""

    def __init__(self, admission: Admission, pool: str):
        self.admission, self.pool, self.released = admission, pool, False

    @asynccontextmanager
    async def slot(self):
        a = self.admission
        if self.pool not in a._pools:
            a._pools[self.pool] = asyncio.Semaphore(a.batch if self.pool == "batch" else a.concurrency)
        try:
            async with a._pools[self.pool]:
                a.counters.started += 1
                try:
                    yield
                except (asyncio.CancelledError, GeneratorExit):  # the client went away mid-generation
                    a.counters.cancelled += 1
                    raise
                except Exception:
                    a.counters.failed += 1
                    raise
                a.counters.finished += 1
        finally:
            self.release()

    def release(self) -> None:
        if not self.released:  # idempotent: called by slot() and, as a backstop, after the response
            self.released = True
            self.admission.inside -= 1


async def in_thread(iterator: Iterator, ahead: int = 32) -> AsyncIterator:
    """Iterate a blocking generator (token decoding, a sampling loop) from async code. A thread of its
    own runs it, up to `ahead` items in front of the consumer, so decoding never waits for the event
    loop to send the last piece (with batched decoding, a late generation would miss the next shared
    pass). If the consumer stops (the client disconnected), the generator is closed after the item
    in progress, so the model stops computing."""
    loop = asyncio.get_running_loop()
    items: asyncio.Queue = asyncio.Queue()
    room, stop = threading.Semaphore(ahead), threading.Event()

    def produce():
        try:
            for item in iterator:
                room.acquire()
                if stop.is_set():
                    break
                loop.call_soon_threadsafe(items.put_nowait, (item, None))
        except BaseException as e:  # raised again in the consumer
            loop.call_soon_threadsafe(items.put_nowait, (_END, e))
        finally:
            iterator.close()
            try:
                loop.call_soon_threadsafe(items.put_nowait, (_END, None))
            except RuntimeError:  # the event loop has closed (the server is stopping)
                pass

    threading.Thread(target=produce, name="genlab-stream", daemon=True).start()
    try:
        while True:
            item, error = await items.get()
            if error is not None:
                raise error
            if item is _END:
                return
            room.release()
            yield item
    finally:
        stop.set()
        room.release()  # wake the producer if it waits for room; it sees `stop` and closes the generator


def sse(payload: dict | str) -> str:
    """One Server-Sent Event: `data: {...}` and a blank line."""
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, separators=(',', ':'))}\n\n"


DONE = sse("[DONE]")


def event_stream(events: AsyncIterator[str], ticket: Ticket):
    """The HTTP response for a stream of SSE events. The ticket is released when the events end,
    and once more (harmlessly) after the response, in case the client left before they began."""
    from fastapi.responses import StreamingResponse
    from starlette.background import BackgroundTask

    return StreamingResponse(events, media_type="text/event-stream", background=BackgroundTask(ticket.release),
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def error_event(e: Exception, **extra) -> str:
    """A failure after a stream has started (its 200 headers are gone): OpenAI's error shape, as an event."""
    from genlab.errors import GenlabError

    from genlab.server.protocol import request_field

    message = e.renamed(request_field) if isinstance(e, GenlabError) else f"internal error: {type(e).__name__}: {e}"
    return sse({**extra, "error": {"message": message, "type": "server_error", "param": None, "code": None}})
