"""Batched serving: total tokens/s of N concurrent chat clients against one client, on a real `genlab serve`.

    python benchmarks/server_batch.py                  # 8 clients, 128 tokens a reply, 2 rounds
    python benchmarks/server_batch.py --batch 1        # the same with batching off, for comparison

Starts `genlab serve` (text only) on loopback. Request i is a streamed chat completion with its
own prompt and seed i, at the server's default sampling (speculative decoding included), and
exactly --tokens tokens long (the `ignore_eos` extension), so no client idles while another's
longer reply runs on. Each
round, in turn: one client sends requests 0..N-1 one after another; then N clients run at once,
client i sending request i --repeat times in a row (so the clients stay busy, as a loaded server's
are, instead of the last long reply running alone). Reports total tokens/s both ways and their
ratio, checks that every reply is the text request i got alone, and reads the server's resident
memory. Writes docs/server_batch.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from server_load import start_server  # noqa: E402

PROMPTS = ["Explain how a rainbow forms.", "Write a short story about a lighthouse keeper.",
           "Summarise this: The meeting moved from Monday to Wednesday because the projector was broken, "
           "and everyone must bring their own laptop.", "Give three tips for learning to cook.",
           "Rewrite this politely: send me the report now.", "What is the difference between a list and a tuple in Python?",
           "Describe a walk through a forest in autumn.", "Explain what a neural network is to a child.",
           "List the planets of the solar system.", "Write a limerick about a cat.", "Why do we have seasons?",
           "Fix this code: def add(a, b) return a + b", "What makes a good password?", "Describe the taste of coffee.",
           "Explain recursion with an example.", "Plan a picnic for four people."]


async def chat(http: httpx.AsyncClient, i: int, tokens: int) -> dict:
    body = {"messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], "max_tokens": tokens, "seed": i,
            "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}
    text, usage = [], None
    async with http.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            raise SystemExit(f"request {i} got {r.status_code}: {(await r.aread())[:200]!r}")
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    raise SystemExit(f"request {i} failed: {chunk['error']['message']}")
                if chunk.get("usage"):
                    usage = chunk["usage"]
                elif chunk["choices"]:
                    text.append(chunk["choices"][0]["delta"].get("content") or "")
    return {"text": "".join(text), "tokens": usage["completion_tokens"]}


async def one_client(url: str, n: int, tokens: int) -> tuple[list[dict], float]:
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        t0 = time.perf_counter()
        out = [await chat(http, i, tokens) for i in range(n)]
        return out, time.perf_counter() - t0


async def many_clients(url: str, n: int, tokens: int, repeat: int) -> tuple[list[list[dict]], float]:
    async def client(i):
        async with httpx.AsyncClient(base_url=url, timeout=600) as http:
            return [await chat(http, i, tokens) for _ in range(repeat)]

    t0 = time.perf_counter()
    out = await asyncio.gather(*(client(i) for i in range(n)))
    return list(out), time.perf_counter() - t0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128, help="max_tokens of each reply")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="requests each concurrent client sends in a row")
    parser.add_argument("--batch", type=int, default=8, help="the server's --batch")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "server_batch.json")
    args = parser.parse_args()
    proc, url = start_server(1, 2 * args.clients, "--no-image", "--text-model", "smollm2-135m-instruct",
                             "--batch", str(args.batch))
    try:
        # warm: first-call allocations, and the batched session the first shared pass makes, stay out of the figures
        asyncio.run(one_client(url, 2, 8))
        asyncio.run(many_clients(url, 2, 8, 1))
        rss_idle = rss_mib(proc.pid)
        rounds = []
        for r in range(args.rounds):
            alone, t_alone = asyncio.run(one_client(url, args.clients, args.tokens))
            together, t_together = asyncio.run(many_clients(url, args.clients, args.tokens, args.repeat))
            same = sum(a["text"] == b["text"] for a, replies in zip(alone, together) for b in replies)
            tok_alone, tok_together = sum(a["tokens"] for a in alone), sum(b["tokens"] for c in together for b in c)
            rounds.append({"one_client_tok_s": round(tok_alone / t_alone, 1), "clients_tok_s": round(tok_together / t_together, 1),
                           "ratio": round((tok_together / t_together) / (tok_alone / t_alone), 2),
                           "same_text": f"{same}/{args.clients * args.repeat}", "tokens": tok_together})
            print(json.dumps(rounds[-1]), flush=True)
        stats = httpx.get(url + "/v1/genlab/stats").json()
        rss_loaded = rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    report = {"command": "python benchmarks/server_batch.py " + " ".join(sys.argv[1:]), "cpu": _cpu(),
              "clients": args.clients, "repeat": args.repeat, "max_tokens": args.tokens, "batch": args.batch, "rounds": rounds,
              "median_ratio": statistics.median(r["ratio"] for r in rounds),
              "server_rss_mib": {"after_warm_up": round(rss_idle), "after_load": round(rss_loaded)},
              "batched_passes": stats.get("batched_passes"), "batched_calls": stats.get("batched_calls")}
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: report[k] for k in ("median_ratio", "server_rss_mib", "batched_passes", "batched_calls")}))
    print(f"wrote {args.out}")


def _cpu() -> str:
    info = Path("/proc/cpuinfo").read_text()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    return f"{name}, {os.cpu_count()} cores, AVX-512 {'yes' if 'avx512f' in info else 'no'}"


if __name__ == "__main__":
    main()
