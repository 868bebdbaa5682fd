"""How the server shares one machine: a bounded queue in front of N generation slots,
blocking model code run off the event loop, and Server-Sent Events.

A generation (one request, all its choices or images) holds a slot while it runs. Up to
`queue` more requests wait for a slot; the next one is answered 429 with Retry-After at
once, so a flood never piles up unbounded work. On a CPU one slot is usually right: a
generation already uses every core, and two at once only make both slower.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio

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
        self.inside = 0  # running + waiting
        self.counters = Counters()
        self._slots: asyncio.Semaphore | None = None  # made on first use, inside the server's event loop

    def ticket(self) -> "Ticket":
        """Claim a place in the queue now, or refuse with 429 if it is full."""
        if self.inside >= self.concurrency + self.queue:
            self.counters.rejected += 1
            raise APIError(429, f"the server is busy: {self.concurrency} generation(s) running and {self.queue} waiting, "
                                "which is its limit (--concurrency, --queue); retry shortly",
                           type="rate_limit_error", code="server_busy", headers={"Retry-After": "1"})
        self.inside += 1
        return Ticket(self)


class Ticket:
    """One request's place: `async with ticket.slot():` waits for a slot; release() frees the place."""

    def __init__(self, admission: Admission):
        self.admission, self.released = admission, False

    @asynccontextmanager
    async def slot(self):
        a = self.admission
        if a._slots is None:
            a._slots = asyncio.Semaphore(a.concurrency)
        try:
            async with a._slots:
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


async def in_thread(iterator: Iterator) -> AsyncIterator:
    """Iterate a blocking generator (token decoding, a sampling loop) from async code, one item per
    worker-thread call. If the consumer stops (the client disconnected), the generator is closed
    after the item in progress, so the model stops computing."""
    try:
        while (item := await anyio.to_thread.run_sync(next, iterator, _END)) is not _END:
            yield item
    finally:
        iterator.close()


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
