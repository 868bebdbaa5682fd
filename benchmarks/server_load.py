"""A bounded load on `genlab serve` over loopback: N clients for T seconds, mixing text streams and images.

    python benchmarks/server_load.py                     # 1 client, then concurrency + queue clients
    python benchmarks/server_load.py --clients 12 --seconds 30

Starts `genlab serve` as a separate process (its default capacity: 1 generation running, 8
waiting) and runs each client count in turn. Every client loops: a streamed chat completion
(32 tokens) or a shapes image (20 steps), chosen by --image-share. Reports requests/s, p50/p95
latency, time to first token, tokens/s, and the failures: 429 answers ("rejected", expected
only above capacity) and errors (anything else that went wrong; must be 0). Writes
docs/server_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

CHAT = {"messages": [{"role": "user", "content": "Describe the sea in two sentences."}], "max_tokens": 32,
        "stream": True, "temperature": 0.7, "stream_options": {"include_usage": True}}
IMAGE = {"prompt": "a red circle above a blue square", "model": "shapes", "steps": 20}


async def text_request(http: httpx.AsyncClient, seed: int) -> dict:
    start, first, tokens = time.perf_counter(), None, 0
    async with http.stream("POST", "/v1/chat/completions", json=dict(CHAT, seed=seed)) as r:
        if r.status_code != 200:
            await r.aread()
            return {"kind": "text", "status": r.status_code}
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                return {"kind": "text", "status": 500}
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif chunk["choices"] and chunk["choices"][0]["delta"].get("content") and first is None:
                first = time.perf_counter() - start
    return {"kind": "text", "status": 200, "latency": time.perf_counter() - start, "ttft": first, "tokens": tokens}


async def image_request(http: httpx.AsyncClient, seed: int) -> dict:
    start = time.perf_counter()
    r = await http.post("/v1/images/generations", json=dict(IMAGE, seed=seed))
    ok = r.status_code == 200 and len(r.json()["data"]) == 1
    return {"kind": "image", "status": r.status_code if ok or r.status_code != 200 else 500,
            "latency": time.perf_counter() - start}


async def client(url: str, seconds: float, image_share: float, rng: random.Random, results: list) -> None:
    deadline = time.perf_counter() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        while time.perf_counter() < deadline:
            job = image_request if rng.random() < image_share else text_request
            try:
                results.append(await job(http, rng.randrange(2**31)))
            except httpx.HTTPError as e:
                results.append({"kind": job.__name__.split("_")[0], "status": -1, "error": str(e)})
            if results[-1]["status"] == 429:
                await asyncio.sleep(1.0)  # Retry-After


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def summarise(results: list[dict], clients: int, seconds: float) -> dict:
    done = [r for r in results if r["status"] == 200]
    row = {"clients": clients, "seconds": seconds, "requests": len(results), "ok": len(done),
           "requests_per_s": round(len(done) / seconds, 3),
           "rejected_429": sum(r["status"] == 429 for r in results),
           "errors": sum(r["status"] not in (200, 429) for r in results)}
    for kind in ("text", "image"):
        lat = [r["latency"] for r in done if r["kind"] == kind]
        row[kind] = {"count": len(lat), "p50_s": _round(percentile(lat, 0.5)), "p95_s": _round(percentile(lat, 0.95))}
    ttft = [r["ttft"] for r in done if r["kind"] == "text" and r["ttft"] is not None]
    row["text"].update(ttft_p50_s=_round(percentile(ttft, 0.5)), ttft_p95_s=_round(percentile(ttft, 0.95)),
                       tokens_per_s=round(sum(r["tokens"] for r in done if r["kind"] == "text") / seconds, 2))
    return row


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def start_server(concurrency: int, queue: int, *extra: str) -> tuple[subprocess.Popen, str]:
    """`genlab serve` on a free loopback port, with `extra` options; returns once /health answers 200."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "genlab", "serve", "--port", str(port), "--concurrency", str(concurrency),
                             "--queue", str(queue), "--log-level", "warning", *extra], env=dict(os.environ, GENLAB_QUIET="1"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if httpx.get(url + "/health").status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not become ready in 300 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="*", help="client counts to run (default: 1 and concurrency + queue)")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--image-share", type=float, default=0.5, help="fraction of requests that are images")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--queue", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "server_load.json")
    args = parser.parse_args()
    counts = args.clients or [1, args.concurrency + args.queue]
    proc, url = start_server(args.concurrency, args.queue)
    try:
        asyncio.run(_warm(url))
        rows = []
        for n in counts:
            results: list[dict] = []
            t0 = time.perf_counter()
            asyncio.run(_run(url, n, args.seconds, args.image_share, results))
            rows.append(summarise(results, n, time.perf_counter() - t0))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        proc.terminate()
        proc.wait(30)
    report = {"command": "python benchmarks/server_load.py " + " ".join(sys.argv[1:]), "cpu_count": os.cpu_count(),
              "server": {"concurrency": args.concurrency, "queue": args.queue}, "chat": CHAT, "image": IMAGE,
              "image_share": args.image_share, "rows": rows}
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    print("| clients | req/s | text p50 / p95 s | TTFT p50 / p95 s | tokens/s | image p50 / p95 s | 429 | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        t, i = r["text"], r["image"]
        print(f"| {r['clients']} | {r['requests_per_s']:.2f} | {t['p50_s']} / {t['p95_s']} | {t['ttft_p50_s']} / "
              f"{t['ttft_p95_s']} | {t['tokens_per_s']} | {i['p50_s']} / {i['p95_s']} | {r['rejected_429']} | {r['errors']} |")


async def _run(url: str, clients: int, seconds: float, image_share: float, results: list) -> None:
    await asyncio.gather(*(client(url, seconds, image_share, random.Random(i), results) for i in range(clients)))


async def _warm(url: str) -> None:
    """One request of each kind first, so one-off costs (first-call allocations) stay out of the figures."""
    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        await text_request(http, 0)
        await image_request(http, 0)


if __name__ == "__main__":
    main()
