"""Batched decoding: concurrent generations share each forward pass of the model.

Decoding one token reads every weight once (docs/text-engines.md). Eight generations that each
read the weights for their own token do eight times the reading that one shared pass does, and
on a CPU the reading is most of the cost. So `genlab serve` runs its text generations in parallel
threads, each in the ordinary decoding loop (decode.py, speculative.py), and hands their models a
Batcher instead of the engine itself:

    thread 1: ... sample -> forward([t1], cache1) --\
    thread 2: ... sample -> forward([t2], cache2) ----> one pass: forward_batch([...]) -> each its logits
    thread 3: ... sample -> forward(prompt, cache3) -/    (a new request's prompt joins running ones)

This is continuous batching: a generation joins the next pass after it arrives and leaves when it
ends. Each sequence keeps its own KV cache and attends over it alone, and the engine computes every
row as it would alone (onnx_llama.py), so a request gets exactly the text it gets by itself, with
the same seed. Sampling, stop strings, logprobs and speculative guesses stay in each thread's loop.
"""

from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass, field

import torch

GATHER_S = 0.02  # how long a pass waits for the other generations' next tokens (they are sampling)


@dataclass
class _Call:
    ids: list[int]
    cache: object
    count: int
    done: threading.Event = field(default_factory=threading.Event)
    logits: torch.Tensor | None = None
    error: BaseException | None = None


class Batcher:
    """The LanguageModel protocol (decode.py) for many threads at once, over an engine with forward_batch and session_for.

        gen.lm = Batcher(gen.lm, slots=8)   # then call gen.stream(...) from up to 8 threads
    """

    def __init__(self, lm, slots: int = 8):
        self.lm, self.slots = lm, slots
        lm.graph(slots)  # build and cache the batched graph now; its session (~400 MB) waits for the first shared pass
        self._cond = threading.Condition()
        self._pending: list[_Call] = []
        self._live = weakref.WeakSet()  # caches of the generations in progress: a pass waits for them
        self.passes = self.calls = 0  # forward passes run, and the generations' calls they served
        threading.Thread(target=self._run, name="genlab-batcher", daemon=True).start()

    def __getattr__(self, name):  # tokenizer, context_length, stop_token_ids, rewind, engine, dtype, ...
        return getattr(self.lm, name)

    def new_cache(self, max_len: int):
        cache = self.lm.new_cache(max_len)
        self._live.add(cache)  # gone when its generation's loop ends and drops it
        return cache

    def forward(self, ids: list[int], cache) -> torch.Tensor:
        return self.forward_all(ids, cache, 1)[0]

    def forward_all(self, ids: list[int], cache, count: int) -> torch.Tensor:
        """Wait for the next shared pass to compute this call; its logits (count, V)."""
        call = _Call(list(ids), cache, count)
        with self._cond:
            self._pending.append(call)
            self._cond.notify_all()
        call.done.wait()
        if call.error is not None:
            raise call.error
        return call.logits

    def _run(self) -> None:
        while True:
            calls = self._gather()
            try:  # one pass; a sequence alone runs the one-slot graph, which is the fastest for one
                self._compute(calls, 1 if len(calls) == 1 else self.slots)
            except Exception:  # one call's fault must not fail the others: each alone, keeping its own error
                for call in calls:
                    try:
                        self._compute([call], 1)
                    except Exception as e:  # raised again in the generation's own thread
                        call.error = e
            self.passes += 1
            self.calls += len(calls)
            for call in calls:
                call.done.set()
            del calls, call  # hold no cache while waiting: a finished generation's cache must be free to go

    def _compute(self, calls: list[_Call], slots: int) -> None:
        out = self.lm.forward_batch([(c.ids, c.cache, c.count) for c in calls], slots)
        for call, logits in zip(calls, out):
            call.logits = logits

    def _gather(self) -> list[_Call]:
        """The next pass's calls: every live generation's, or those that came within GATHER_S of the first."""
        with self._cond:
            while not self._pending:
                self._cond.wait()
            deadline = time.monotonic() + GATHER_S
            while len(self._pending) < min(len(self._live), self.slots) and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            calls, self._pending = self._pending[:self.slots], self._pending[self.slots:]
        return calls


def batching(lm, slots: int):
    """`lm` wrapped in a Batcher when its engine can share passes (forward_batch) and slots > 1, else `lm`."""
    return Batcher(lm, slots) if slots > 1 and hasattr(lm, "session_for") else lm
