"""Text and images at once on a real `genlab serve`, then cancelled streams: the server bars of issue 28.

    python benchmarks/server_mixed_load.py                 # 60 s chat alone, 60 s chat + images, 50 cancels
    python benchmarks/server_mixed_load.py --seconds 20    # a quicker look

Starts `genlab serve --text-model smollm2-135m-instruct --image-model shapes --concurrency 1
--batch 16 --queue 8` on loopback, in its own process:
- --batch 16: the 16 chat clients share each forward pass, so none waits for another's reply;
- --concurrency 1: one image job at a time, since a generation already uses both cores;
- --queue 8: each kind's waiting places, so the 7 image clients not running wait instead of
  getting 429, and the image line is apart from chat's (admission.py).

Load: 16 chat clients alone for --seconds (the baseline), then the same 16 with 8 image clients.
A chat client loops on a streamed 32-token chat (SmolLM2, temperature 0.7), an image client on a
20-step shapes image. A 429 is counted apart, and the client waits its Retry-After and sends the
same request again; a request's latency runs from its first try to its last byte, waits included.
Anything else that is not a 200 with a whole answer is an error (5xx, an error event, a dropped
connection). The bar: no errors, and chat p95 with images at most 3x chat p95 alone.

Cancellation: 50 streams, chat and image by turns, 5 at a time, each closed by its client halfway
(after 64 of 128 tokens, or 20 of 40 denoising steps). The server's resident memory (VmRSS) is
read before and after them, idle, and its counters (GET /v1/genlab/stats) say how many decoding or
denoising steps ran after each cancel was noticed. The bars: memory within 5%, at most one step.
Writes docs/server_mixed_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from server_batch import rss_mib, _cpu  # noqa: E402
from server_load import percentile, start_server  # noqa: E402

SERVER = ["--batch", "16", "--text-model", "smollm2-135m-instruct", "--image-model", "shapes"]  # with concurrency 1, queue 8
CHAT = {"messages": [{"role": "user", "content": "Describe the sea in two sentences."}], "max_tokens": 32,
        "stream": True, "temperature": 0.7}
IMAGE = {"prompt": "a red circle above a blue square", "model": "shapes", "steps": 20}
LONG_CHAT = {"messages": [{"role": "user", "content": "Write a long story about the sea."}], "max_tokens": 128,
             "stream": True, "ignore_eos": True}
LONG_IMAGE = dict(IMAGE, steps=40, stream=True)


async def chat(http: httpx.AsyncClient, seed: int) -> int:
    """One streamed chat; its status (200 only with [DONE] and no error event)."""
    async with http.stream("POST", "/v1/chat/completions", json=dict(CHAT, seed=seed)) as r:
        if r.status_code != 200:
            await r.aread()
            return r.status_code
        done = False
        async for line in r.aiter_lines():
            if line.startswith("data: {") and '"error"' in line:
                return 500
            done = done or line == "data: [DONE]"
    return 200 if done else -1


async def image(http: httpx.AsyncClient, seed: int) -> int:
    r = await http.post("/v1/images/generations", json=dict(IMAGE, seed=seed))
    return 500 if r.status_code == 200 and len(r.json()["data"]) != 1 else r.status_code


async def client(url: str, job, seconds: float, rng: random.Random, results: list) -> None:
    """Loop on `job` until the deadline; on 429 wait Retry-After and send the same request again."""
    deadline = time.perf_counter() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        while time.perf_counter() < deadline:
            seed, start, retries = rng.randrange(2**31), time.perf_counter(), 0
            while True:
                try:
                    status = await job(http, seed)
                except httpx.TransportError:  # refused, reset or cut short: a dropped connection
                    status = -1
                if status != 429:
                    break
                retries += 1
                await asyncio.sleep(1.0)  # the server's Retry-After
            results.append({"kind": job.__name__, "status": status, "retries": retries,
                            "latency": time.perf_counter() - start})


async def load(url: str, chats: int, images: int, seconds: float) -> list[dict]:
    results: list[dict] = []
    jobs = [chat] * chats + [image] * images
    await asyncio.gather(*(client(url, job, seconds, random.Random(i), results) for i, job in enumerate(jobs)))
    return results


def summarise(results: list[dict], kind: str) -> dict:
    mine = [r for r in results if r["kind"] == kind]
    ok = [r["latency"] for r in mine if r["status"] == 200]
    return {"requests": len(mine), "ok": len(ok), "p50_s": _round(percentile(ok, 0.5)), "p95_s": _round(percentile(ok, 0.95)),
            "retried_after_429": sum(r["retries"] for r in mine), "http_5xx": sum(r["status"] >= 500 for r in mine),
            "dropped": sum(r["status"] == -1 for r in mine),
            "other_errors": sum(r["status"] not in (200, -1) and r["status"] < 500 for r in mine)}


async def cancelled(http: httpx.AsyncClient, i: int) -> str:
    """Stream i (chat when even, image when odd), closed halfway; what happened."""
    body, marker, half = (LONG_CHAT, '"content"', 64) if i % 2 == 0 else (LONG_IMAGE, "partial_image", 20)
    async with http.stream("POST", "/v1/chat/completions" if i % 2 == 0 else "/v1/images/generations",
                           json=dict(body, seed=i)) as r:
        if r.status_code != 200:
            return f"status {r.status_code}"
        seen = 0
        async for line in r.aiter_lines():
            seen += marker in line
            if seen == half:
                return "cancelled"  # leaving the block closes the connection mid-stream
    return "finished"


async def cancellations(url: str, count: int, at_once: int) -> list[str]:
    out = []
    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        for first in range(0, count, at_once):
            out += await asyncio.gather(*(cancelled(http, i) for i in range(first, min(first + at_once, count))))
    return out


def idle_stats(url: str, stopped: int = 0) -> dict:
    """The server's counters once nothing runs and `stopped` cancelled generations have ended; then a second's rest."""
    deadline = time.time() + 60
    while time.time() < deadline:
        s = httpx.get(url + "/v1/genlab/stats").json()
        if s["running_or_waiting"] == 0 and s["stopped"] >= stopped:
            break
        time.sleep(0.2)
    time.sleep(1.0)
    return s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--chats", type=int, default=16)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--cancels", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "server_mixed_load.json")
    args = parser.parse_args()
    load_before = os.getloadavg()
    proc, url = start_server(1, 8, *SERVER)
    try:
        asyncio.run(load(url, args.chats, 1, 1.0))  # warm-up: the 16-row batched session, an image
        rows = {}
        for name, images in (("chat_alone", 0), ("chat_and_images", args.images)):
            t0 = time.perf_counter()
            results = asyncio.run(load(url, args.chats, images, args.seconds))
            rows[name] = {"seconds": round(time.perf_counter() - t0, 1), "chat": summarise(results, "chat")}
            if images:
                rows[name]["image"] = summarise(results, "image")
            print(name, json.dumps(rows[name]), flush=True)
        before = idle_stats(url)
        rss_before = rss_mib(proc.pid)
        outcomes = asyncio.run(cancellations(url, args.cancels, 5))
        after = idle_stats(url, before["stopped"] + outcomes.count("cancelled"))
        rss_after = rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    ratio = rows["chat_and_images"]["chat"]["p95_s"] / rows["chat_alone"]["chat"]["p95_s"]
    errors = sum(r[k]["http_5xx"] + r[k]["dropped"] + r[k]["other_errors"] for r in rows.values() for k in ("chat", "image") if k in r)
    cancel = {"streams": args.cancels, "outcomes": {o: outcomes.count(o) for o in set(outcomes)},
              "stopped": after["stopped"] - before["stopped"],
              "steps_after_cancel": after["steps_after_cancel"] - before["steps_after_cancel"],
              "max_steps_after_cancel": after["max_steps_after_cancel"], "max_stop_s": after["max_stop_s"],
              "rss_mib_before": round(rss_before, 1), "rss_mib_after": round(rss_after, 1),
              "rss_change": round(rss_after / rss_before - 1, 4)}
    report = {"command": "python benchmarks/server_mixed_load.py " + " ".join(sys.argv[1:]), "cpu": _cpu(),
              "load_average_before": [round(x, 2) for x in load_before], "load_average_after": [round(x, 2) for x in os.getloadavg()],
              "server": "genlab serve --concurrency 1 --queue 8 " + " ".join(SERVER), "chat": CHAT, "image": IMAGE,
              "load": rows, "chat_p95_ratio": round(ratio, 2), "errors": errors, "cancellation": cancel,
              "bars_met": {"no_errors": errors == 0, "chat_p95_ratio_at_most_3": ratio <= 3,
                           "rss_within_5_percent": abs(cancel["rss_change"]) <= 0.05,
                           "at_most_one_step_after_cancel": cancel["max_steps_after_cancel"] <= 1}}
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: report[k] for k in ("chat_p95_ratio", "errors", "cancellation", "bars_met")}, indent=1))
    print(f"wrote {args.out}")


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


if __name__ == "__main__":
    main()
