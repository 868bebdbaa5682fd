"""How the server shares one machine: bounded, fair waiting lines in front of N generation
slots, blocking model code run off the event loop, Server-Sent Events, and cancellation.

A generation (one request, all its choices or images) holds a slot while it runs. Each kind of
work (text, image, embedding) has its own waiting line of up to `queue` requests; the next one of a
kind whose line is full is answered 429 with Retry-After at once, so a flood never piles up
unbounded work. On a CPU one slot is usually right: a generation already uses every core, and
two at once only make both slower.

Fair sharing, in two rules:
1. Waiting places are per kind. A burst of image requests fills the image line and gets 429s;
   chat still finds its own `queue` places, so it is never refused because of images.
2. A freed slot goes to the lines in turn (round-robin): after an image job, the next chat in
   line runs before the next image, however many images wait. So a chat waits for at most one
   job of each other kind, not for the whole image queue.
Text on an engine that batches (text/batching.py) has a pool of its own: up to `batch` text
generations run at once, sharing each forward pass, and an image job does not hold them up.

Cancellation: a generation runs in a thread of its own (in_thread), which checks between
steps (one token, one denoising step) whether anyone still wants the result. When the client
disconnects, from a stream or from a request waiting for its whole answer (Ticket.run), the
thread stops after the step in progress. Counters records how many steps ran after each cancel
was noticed (the bar is one: the step that was already computing).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass

import anyio
from starlette.background import BackgroundTask
from starlette.responses import StreamingResponse

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
    stopped: int = 0  # cancelled generations whose model thread has since ended ...
    steps_after_cancel: int = 0  # ... the decoding or denoising steps they ran after the cancel was noticed ...
    max_steps_after_cancel: int = 0  # ... the most for one generation (1: the step that was computing) ...
    max_stop_s: float = 0.0  # ... and the longest time from the cancel to the thread's end


class Pool:
    """`size` slots shared by kinds of work. Each kind waits in a line of its own, and a freed
    slot goes to the lines in turn, starting after the kind served last (round-robin)."""

    def __init__(self, size: int):
        self.size, self.held = size, 0
        self.lines: dict[str, deque[asyncio.Future]] = {}  # kind -> its waiters, first come first
        self.last: str | None = None  # the kind that took a slot last

    async def acquire(self, kind: str) -> None:
        if self.held < self.size and not any(self.lines.values()):
            self.held, self.last = self.held + 1, kind
            return
        turn = asyncio.get_running_loop().create_future()
        line = self.lines.setdefault(kind, deque())
        line.append(turn)
        try:
            await turn  # release() resolves it, having counted the slot as ours
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # handed a slot just as we gave up: pass it on
                self.release()
            elif turn in line:
                line.remove(turn)
            raise

    def release(self) -> None:
        self.held -= 1
        kinds = list(self.lines)
        first = kinds.index(self.last) + 1 if self.last in kinds else 0
        for kind in kinds[first:] + kinds[:first]:  # the kinds after the last one served, then from the top
            line = self.lines[kind]
            while line and line[0].done():  # a waiter cancelled an instant ago
                line.popleft()
            if line:
                self.held, self.last = self.held + 1, kind
                line.popleft().set_result(None)
                return


class Admission:
    def __init__(self, concurrency: int, queue: int):
        self.concurrency, self.queue = concurrency, queue  # queue: waiting places of each kind
        self.batch = 0  # the batch pool's slots: --batch, set by the model loader once a model batches
        self.waiting: dict[str, int] = {}  # kind -> requests admitted but not yet in a slot
        self.running: dict[str, int] = {}  # kind -> requests in a slot
        self.counters = Counters()
        self._pools: dict[str, Pool] = {}  # "shared" (--concurrency) and "batch" (--batch), made on first use
        self._stops = threading.Lock()  # model threads record their stops concurrently

    @property
    def inside(self) -> int:
        """Requests running or waiting, of every kind."""
        return sum(self.waiting.values()) + sum(self.running.values())

    def ticket(self, kind: str = "image", batched: bool = False) -> "Ticket":
        """Claim a place in `kind`'s line now ("text", "image", "embedding": each name has a line of its
        own), or refuse with 429 if it is full. `batched`: a text generation on a batching engine,
        which takes a slot of the batch pool."""
        pool = "batch" if batched and self.batch else "shared"
        free = self.pool(pool).size - self.pool(pool).held  # slots free now: those waiting will take them at once
        if self.waiting.get(kind, 0) >= self.queue + free:
            self.counters.rejected += 1
            raise APIError(429, f"the server is busy: {self.running.get(kind, 0)} {kind} generation(s) running and "
                                f"{self.queue} waiting, which is its limit for {kind} requests (--concurrency, --batch, "
                                "--queue); retry shortly", type="rate_limit_error", code="server_busy",
                           headers={"Retry-After": "1"})
        self.waiting[kind] = self.waiting.get(kind, 0) + 1
        return Ticket(self, kind, pool)

    def pool(self, name: str) -> Pool:
        if name not in self._pools:
            self._pools[name] = Pool(self.batch if name == "batch" else self.concurrency)
        return self._pools[name]

    def stopped(self, steps: int, seconds: float) -> None:
        """A cancelled generation's thread has ended, `steps` steps and `seconds` after the cancel (from that thread)."""
        with self._stops:
            c = self.counters
            c.stopped += 1
            c.steps_after_cancel += steps
            c.max_steps_after_cancel = max(c.max_steps_after_cancel, steps)
            c.max_stop_s = round(max(c.max_stop_s, seconds), 4)

    def stats(self) -> dict:
        """The queue's part of GET /v1/genlab/stats."""
        return {"running_or_waiting": self.inside, "concurrency": self.concurrency, "batch": self.batch,
                "queue": self.queue, "waiting": dict(self.waiting), "running": dict(self.running), **vars(self.counters)}


class Ticket:
    """One request's place: `async with ticket.slot():` waits for a slot of its pool; release() frees the place."""

    def __init__(self, admission: Admission, kind: str, pool: str):
        self.admission, self.kind, self.pool = admission, kind, pool
        self.state = "waiting"  # then "running", then "released"

    @asynccontextmanager
    async def slot(self):
        a, pool = self.admission, self.admission.pool(self.pool)
        try:
            await pool.acquire(self.kind)
            self._move("running")
            try:
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
                pool.release()
        finally:
            self.release()

    async def run(self, request, work: Callable[[], Awaitable]):
        """`await work()` in a slot, for a request that waits for its whole answer. If the client
        disconnects first, the work is cancelled (its model thread stops after the step in progress)
        and the answer is None."""
        async def in_slot():
            async with self.slot():
                return await work()

        task, gone = asyncio.ensure_future(in_slot()), asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                return task.result()
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
            return None
        finally:
            gone.cancel()
            task.cancel()  # (if this request itself was cancelled: the server is stopping)
            self.release()  # a task cancelled before it began never entered the slot

    def _move(self, to: str) -> None:
        """waiting -> running -> released, keeping the admission's counts of each kind."""
        counts = {"waiting": self.admission.waiting, "running": self.admission.running}
        counts[self.state][self.kind] -= 1
        if to in counts:
            counts[to][self.kind] = counts[to].get(self.kind, 0) + 1
        self.state = to

    def release(self) -> None:
        if self.state != "released":  # idempotent: called by slot() and, as a backstop, after the response
            self._move("released")


async def _disconnected(request) -> None:
    """Return when the client has gone. The body is read already, so the next ASGI message is the disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def in_thread(iterator: Iterator, ticket: Ticket | None = None, steps: Callable[[], int] | None = None,
                    ahead: int = 32) -> AsyncIterator:
    """Iterate a blocking generator (token decoding, a sampling loop) from async code. A thread of its
    own runs it, up to `ahead` items in front of the consumer, so decoding never waits for the event
    loop to send the last piece (with batched decoding, a late generation would miss the next shared
    pass). If the consumer stops early (the client disconnected), the thread closes the generator
    after the item in progress, so the model stops computing.

    With a ticket, a cancel is measured: how many steps the thread ran after it was noticed, counted
    by `steps()` (the work done so far, read from either thread; default: the items yielded)."""
    loop = asyncio.get_running_loop()
    items: asyncio.Queue = asyncio.Queue()
    room, stop = threading.Semaphore(ahead), threading.Event()
    yielded, lock = [0], threading.Lock()
    steps = steps or (lambda: yielded[0])
    cancel: list = []  # (steps, time) when the consumer left early; the producer's end completes the record
    ended = [False]

    def produce():
        try:
            for item in iterator:
                yielded[0] += 1
                room.acquire()
                if stop.is_set():
                    break
                loop.call_soon_threadsafe(items.put_nowait, (item, None))
        except BaseException as e:  # raised again in the consumer
            loop.call_soon_threadsafe(items.put_nowait, (_END, e))
        finally:
            iterator.close()
            with lock:
                ended[0] = True
                if cancel and ticket is not None:
                    ticket.admission.stopped(steps() - cancel[0], time.perf_counter() - cancel[1])
            try:
                loop.call_soon_threadsafe(items.put_nowait, (_END, None))
            except RuntimeError:  # the event loop has closed (the server is stopping)
                pass

    threading.Thread(target=produce, name="genlab-stream", daemon=True).start()
    finished = False
    try:
        while True:
            item, error = await items.get()
            if item is _END:
                finished = True
                if error is not None:
                    raise error
                return
            room.release()
            yield item
    finally:
        if not finished:  # the consumer left early: a cancel
            with lock:
                if not ended[0]:
                    cancel[:] = [steps(), time.perf_counter()]
                elif ticket is not None:  # the generator had already ended: nothing ran after the cancel
                    ticket.admission.stopped(0, 0.0)
        stop.set()
        room.release()  # wake the producer if it waits for room; it sees `stop` and closes the generator


def sse(payload: dict | str) -> str:
    """One Server-Sent Event: `data: {...}` and a blank line."""
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, separators=(',', ':'))}\n\n"


DONE = sse("[DONE]")


class EventStream(StreamingResponse):
    """A StreamingResponse that closes its events as soon as the sending stops. On a disconnect,
    Starlette cancels the sending and leaves the generator to garbage collection; closing it now
    stops its model thread after the step in progress."""

    async def stream_response(self, send) -> None:
        try:
            await super().stream_response(send)
        finally:
            with anyio.CancelScope(shield=True):  # the sending was cancelled; the closing must not be
                await self.body_iterator.aclose()


def event_stream(events: AsyncIterator[str], ticket: Ticket):
    """The HTTP response for a stream of SSE events. The ticket is released when the events end,
    and once more (harmlessly) after the response, in case the client left before they began."""
    return EventStream(events, media_type="text/event-stream", background=BackgroundTask(ticket.release),
                       headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def error_event(e: Exception, **extra) -> str:
    """A failure after a stream has started (its 200 headers are gone): OpenAI's error shape, as an event."""
    from genlab.errors import GenlabError

    from genlab.server.protocol import request_field

    message = e.renamed(request_field) if isinstance(e, GenlabError) else f"internal error: {type(e).__name__}: {e}"
    return sse({**extra, "error": {"message": message, "type": "server_error", "param": None, "code": None}})
