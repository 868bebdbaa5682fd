"""Resident memory with the bundled LLM loaded: `genlab serve` against llama.cpp.

    python benchmarks/text_memory.py

genlab: starts `genlab serve --no-image --text-model smollm2-135m-instruct` (the default 4-bit CPU
engine), waits for GET /health, answers one 128-token chat request, and reads the server process's
resident set (VmRSS) and its peak (VmHWM) from /proc. llama.cpp: a Python process that loads the
same GGUF with llama-cpp-python (n_ctx 2048) and writes one 128-token chat reply, read the same way
(llama.cpp's own server needs packages genlab does not install; the Python process around it is
the same kind of wrapper genlab's server is). A bare Python process with the same imports is
reported too, to show what the interpreter and the libraries cost before any model.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent
CHAT = {"messages": [{"role": "user", "content": "Explain transformer attention in simple terms"}], "max_tokens": 128,
        "temperature": 0}


def memory(pid: int) -> dict:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024  # kB -> MiB
    return {"rss_mib": round(fields["VmRSS"]), "peak_mib": round(fields["VmHWM"])}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def genlab_serve() -> dict:
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", GENLAB_QUIET="1")
    proc = subprocess.Popen([str(BIN / "genlab"), "serve", "--no-image", "--text-model", "smollm2-135m-instruct",
                             "--port", str(port), "--log-level", "warning"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        loaded = memory(proc.pid)
        r = httpx.post(url + "/v1/chat/completions", json=CHAT, timeout=300)
        r.raise_for_status()
        return {"loaded": loaded, "after_reply": memory(proc.pid), "tokens": r.json()["usage"]["completion_tokens"]}
    finally:
        proc.terminate()
        proc.wait(30)


CHILD = r"""
import json, os, sys
from pathlib import Path
def memory():
    f = {l.split(':')[0]: int(l.split()[1]) / 1024 for l in Path('/proc/self/status').read_text().splitlines() if l.split(':')[0] in ('VmRSS', 'VmHWM')}
    return {"rss_mib": round(f["VmRSS"]), "peak_mib": round(f["VmHWM"])}
from genlab.text.sources import bundled_file
gguf = str(bundled_file("smollm2-135m-instruct"))
if sys.argv[1] == "bare":
    import llama_cpp
    print(json.dumps({"loaded": memory()})); sys.exit()
from llama_cpp import Llama
llm = Llama(model_path=gguf, n_ctx=2048, n_threads=len(os.sched_getaffinity(0)), verbose=False)
loaded = memory()
out = llm.create_chat_completion([{"role": "user", "content": "Explain transformer attention in simple terms"}], max_tokens=128, temperature=0)
print(json.dumps({"loaded": loaded, "after_reply": memory(), "tokens": out["usage"]["completion_tokens"]}))
"""


def child(kind: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, kind], capture_output=True, text=True, check=True,
                         env=dict(os.environ, HF_HUB_OFFLINE="1"))
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    from genlab.text.engine import cpu_model

    print(f"# {cpu_model()}, {len(os.sched_getaffinity(0))} cores; resident memory in MiB (peak in brackets)\n")
    rows = {"genlab serve (onnx engine, 4-bit)": genlab_serve()}
    try:
        rows["llama.cpp (llama-cpp-python, Q4_1)"] = child("llama")
        rows["python + llama_cpp imported, no model"] = child("bare")
    except subprocess.CalledProcessError as e:
        print(f"(llama.cpp not measured: {e.stderr.strip().splitlines()[-1] if e.stderr else e})\n")
    print("| process | loaded | after a 128-token reply |")
    print("|---|---|---|")
    for name, r in rows.items():
        after = r.get("after_reply")
        print(f"| {name} | {r['loaded']['rss_mib']} ({r['loaded']['peak_mib']}) | "
              + (f"{after['rss_mib']} ({after['peak_mib']})" if after else "-") + " |")


if __name__ == "__main__":
    main()
