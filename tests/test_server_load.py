"""The server under pressure: fair sharing between text and images, Retry-After on every 429 and
503, and a cancelled request's work stopping within one decoding or denoising step.

The end-to-end tests use the session's server (conftest.py: --concurrency 1, --batch 1, --queue 2),
so text and images share its one slot and each kind has two waiting places.
"""

import asyncio
import threading
import time

import httpx
import pytest

from genlab.server.admission import Admission, Pool
from genlab.server.protocol import APIError

TEXT = "smollm2-135m-instruct"
STORY = [{"role": "user", "content": "Write a long story about the sea."}]


def _stats(server) -> dict:
    return httpx.get(server.url + "/v1/genlab/stats").json()


def _wait(server, done, timeout=30.0) -> dict:
    """The stats once done(stats) holds (or the last ones after `timeout` seconds)."""
    deadline = time.time() + timeout
    while not done(s := _stats(server)) and time.time() < deadline:
        time.sleep(0.05)
    return s


class Watched:
    """A generator that logs when each job starts (gets the slot) and, if gated, waits for the gate first."""

    def __init__(self, gen, kind: str, log: list, gate: threading.Event | None = None):
        self._gen, self._kind, self._log, self._gate = gen, kind, log, gate

    def __getattr__(self, name):
        return getattr(self._gen, name)

    def stream(self, *args, **kwargs):
        self._log.append(self._kind)
        if self._gate is not None:
            assert self._gate.wait(60), "the test never opened the gate"
        yield from self._gen.stream(*args, **kwargs)


# -- fair sharing: the queue's own rules, without a server ------------------------------------------------

def test_a_freed_slot_goes_to_the_kinds_in_turn():
    """Round-robin: with four images waiting before one chat, the chat runs second, not fifth."""
    async def scenario():
        pool, order = Pool(1), []

        async def job(kind: str, name: str):
            await pool.acquire(kind)
            order.append(name)
            await asyncio.sleep(0.001)
            pool.release()

        await pool.acquire("image")  # the slot is busy with an image
        tasks = [asyncio.create_task(job("image", f"image{i}")) for i in range(4)]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(job("text", "chat")))
        await asyncio.sleep(0)
        pool.release()
        await asyncio.gather(*tasks)
        return order, pool.held

    order, held = asyncio.run(scenario())
    assert order == ["chat", "image0", "image1", "image2", "image3"] and held == 0


def test_a_waiter_that_gives_up_passes_its_slot_on():
    async def scenario():
        pool = Pool(1)
        await pool.acquire("image")
        gone = asyncio.create_task(pool.acquire("image"))
        stays = asyncio.create_task(pool.acquire("text"))
        await asyncio.sleep(0)
        gone.cancel()
        pool.release()
        await stays
        return pool.held, gone.cancelled()

    assert asyncio.run(scenario()) == (1, True)


def test_each_kind_has_its_own_waiting_places():
    """A full image line refuses images with 429 and Retry-After, and still admits text."""
    a = Admission(concurrency=1, queue=2)
    tickets = [a.ticket("image") for _ in range(3)]  # one will run (a slot is free), two wait
    with pytest.raises(APIError) as refused:
        a.ticket("image")
    assert refused.value.status == 429 and refused.value.headers["Retry-After"] == "1"
    text = [a.ticket("text"), a.ticket("text")]
    assert a.waiting == {"image": 3, "text": 2} and a.counters.rejected == 1
    for t in tickets + text:
        t.release()
    assert a.inside == 0


def test_every_429_and_503_says_when_to_retry():
    assert APIError(429, "busy").headers == {"Retry-After": "1"}
    assert APIError(503, "loading", headers={"Retry-After": "2"}).headers == {"Retry-After": "2"}
    assert APIError(400, "bad").headers is None


# -- fair sharing, end to end --------------------------------------------------------------------------

def test_an_image_burst_does_not_refuse_or_starve_chat(server):
    """Three images fill the slot and the image line; a fourth gets 429. A chat sent after them is
    admitted and runs as soon as the running image ends, before the two waiting images."""
    models, log, gate = server.app.state.models, [], threading.Event()
    digits, text_gen = models.image["digits"], models.text[TEXT]
    models.image["digits"] = Watched(digits, "image", log, gate)
    models.text[TEXT] = Watched(text_gen, "text", log)
    results = {}

    def post(name: str, route: str, body: dict):
        results[name] = httpx.post(server.url + route, json=body, timeout=60)

    def send(name: str, route: str, body: dict, ready) -> threading.Thread:
        t = threading.Thread(target=post, args=(name, route, body))
        t.start()
        assert ready(_wait(server, ready, timeout=10)), f"{name} was not admitted in time"
        return t

    image = {"prompt": "7", "model": "digits", "steps": 2, "seed": 0}
    try:
        threads = [send("image0", "/v1/images/generations", image, lambda s: s["running"].get("image") == 1)]
        for i in (1, 2):
            threads.append(send(f"image{i}", "/v1/images/generations", image,
                                lambda s, i=i: s["waiting"].get("image") == i))
        busy = httpx.post(server.url + "/v1/images/generations", json=image, timeout=60)
        assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
        threads.append(send("chat", "/v1/chat/completions", {"messages": STORY, "max_tokens": 4, "seed": 0},
                            lambda s: s["waiting"].get("text") == 1))
        gate.set()
        for t in threads:
            t.join(60)
    finally:
        gate.set()
        models.image["digits"], models.text[TEXT] = digits, text_gen
    assert {name: r.status_code for name, r in results.items()} == {"image0": 200, "image1": 200, "image2": 200, "chat": 200}
    assert log == ["image", "text", "image", "image"]  # first come first served would be image, image, image, text
    assert _wait(server, lambda s: s["running_or_waiting"] == 0)["running_or_waiting"] == 0


def test_model_routes_say_retry_after_while_loading():
    from conftest import start_server
    from genlab.server.app import ServerConfig, create_app

    s = start_server(create_app(ServerConfig(text_models=[TEXT], image_models=["digits"]), load=False), ready=False)
    try:
        for route, body in [("/v1/chat/completions", {"messages": STORY}), ("/v1/completions", {"prompt": "a"}),
                            ("/v1/images/generations", {"prompt": "7"})]:
            r = httpx.post(s.url + route, json=body)
            assert r.status_code == 503 and r.headers["retry-after"] == "2", route
        r = httpx.get(s.url + "/health")
        assert r.status_code == 503 and r.headers["retry-after"] == "2"
    finally:
        s.stop()


# -- cancellation --------------------------------------------------------------------------------------

def _cancelled(server, before: dict, stopped: int = 1) -> dict:
    """The stats once `stopped` more cancelled generations have ended; checks each stopped within a step."""
    after = _wait(server, lambda s: s["stopped"] >= before["stopped"] + stopped and s["running_or_waiting"] == 0)
    assert after["stopped"] == before["stopped"] + stopped and after["running_or_waiting"] == 0
    assert after["cancelled"] == before["cancelled"] + stopped
    assert after["steps_after_cancel"] - before["steps_after_cancel"] <= stopped  # at most the step in progress, each
    assert after["max_steps_after_cancel"] <= 1
    return after


@pytest.mark.parametrize("route, body, marker", [
    ("/v1/chat/completions", {"messages": STORY, "max_tokens": 1000, "temperature": 0, "stream": True}, '"content"'),
    ("/v1/images/generations", {"prompt": "a red circle above a blue square", "model": "shapes", "steps": 200,
                                "stream": True, "seed": 0}, "partial_image"),
], ids=["chat", "image"])
def test_a_cancelled_stream_stops_within_one_step(server, route, body, marker):
    before = _wait(server, lambda s: s["running_or_waiting"] == 0)
    with httpx.Client(base_url=server.url, timeout=60) as http:
        with http.stream("POST", route, json=body) as stream:
            seen = 0
            for line in stream.iter_lines():
                seen += marker in line
                if seen == 3:  # it is generating: leave
                    break
    _cancelled(server, before)


@pytest.mark.parametrize("route, body", [
    ("/v1/chat/completions", {"messages": STORY, "max_tokens": 1000, "temperature": 0}),
    ("/v1/images/generations", {"prompt": "a red circle above a blue square", "model": "shapes", "steps": 200, "seed": 0}),
], ids=["chat", "image"])
def test_a_client_that_stops_waiting_stops_its_generation(server, route, body):
    """No stream: the client gives up (a timeout closes its connection) long before the answer."""
    before = _wait(server, lambda s: s["running_or_waiting"] == 0)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + route, json=body, timeout=httpx.Timeout(60, read=0.5))
    after = _cancelled(server, before)
    assert after["finished"] == before["finished"]  # it did not run to the end
