"""Batched decoding (text/batching.py, OnnxLlama.forward_batch): generations that share forward
passes get exactly what each gets alone, logits and text, in Python and through the server."""

import threading

import httpx
import pytest
import torch

from genlab.errors import GenlabError
from genlab.text import onnx_llama

pytestmark = pytest.mark.skipif(not onnx_llama.available(), reason="onnxruntime is not installed")

PROMPTS = ["Explain how a rainbow forms.", "Write a haiku about the sea.", "Summarise: the meeting moved from Monday "
           "to Wednesday because the projector broke.", "List three colours.", "Why is the sky blue?"]


@pytest.fixture(scope="module")
def gen():
    from genlab import TextGenerator

    return TextGenerator(engine="onnx")


def alone(lm, steps: list[tuple[list[int], int]]) -> list[torch.Tensor]:
    """Each (ids, count) run in turn on one fresh cache, one pass each."""
    cache = lm.new_cache(200)
    return [lm.forward_all(ids, cache, count) for ids, count in steps]


def test_a_shared_pass_gives_each_sequence_its_own_logits(gen):
    """A prompt, one-token steps and a 3-row speculative check in the same passes, with slots left empty:
    every row's logits are bit-identical to the same sequence's run alone."""
    lm = gen.lm
    ids = [gen.prompt_ids(p) for p in PROMPTS[:3]]
    plans = [[(ids[0], 1), ([42], 1), ([7, 8, 9], 3)],  # a prompt, a token, then a guess of three checked at once
             [(ids[1], 1), ([5], 1), ([11], 1)],
             [(ids[2], 2), ([13, 14], 2), ([15], 1)]]
    expected = [alone(lm, plan) for plan in plans]
    caches = [lm.new_cache(200) for _ in plans]
    for step in range(3):
        got = lm.forward_batch([(plan[step][0], cache, plan[step][1]) for plan, cache in zip(plans, caches)], slots=8)
        for b in range(3):
            assert got[b].shape == expected[b][step].shape
            assert torch.equal(got[b], expected[b][step]), (b, step)
    assert [c.length for c in caches] == [sum(len(i) for i, _ in plan) for plan in plans]
    # the same sequences again, in another order and another number to a pass: still their own logits
    again = [lm.new_cache(200) for _ in plans]
    first = lm.forward_batch([(plans[2][0][0], again[2], 2), (plans[0][0][0], again[0], 1)], slots=8)
    assert torch.equal(first[0], expected[2][0]) and torch.equal(first[1], expected[0][0])


def test_concurrent_generations_write_what_each_writes_alone(gen):
    """Sampled, with speculative guesses, five threads at once through a Batcher: the same texts as
    one at a time, and the passes were shared."""
    from genlab.text.batching import Batcher

    kw = dict(max_new_tokens=40, temperature=0.8, top_p=0.95)
    one_by_one = [gen.complete(p, seed=i, **kw).text for i, p in enumerate(PROMPTS)]
    plain, batcher = gen.lm, Batcher(gen.lm, slots=8)
    texts = [None] * len(PROMPTS)

    def run(i):
        texts[i] = "".join(piece.text for piece in gen.stream(PROMPTS[i], seed=i, **kw))

    gen.lm = batcher
    try:
        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(PROMPTS))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        gen.lm = plain
    assert texts == one_by_one
    assert batcher.passes < batcher.calls  # some passes served several generations
    assert len(batcher._live) == 0  # every finished generation's cache is gone


def test_one_bad_call_does_not_fail_the_pass(gen):
    from genlab.text.batching import Batcher

    batcher = Batcher(gen.lm, slots=8)
    small, good = batcher.new_cache(4), batcher.new_cache(100)
    result = {}

    def bad():
        try:
            batcher.forward_all(list(range(10, 30)), small, 1)  # 20 tokens into room for 4
        except GenlabError as e:
            result["error"] = str(e)

    t = threading.Thread(target=bad)
    t.start()
    logits = batcher.forward_all(gen.prompt_ids(PROMPTS[0]), good, 1)
    t.join(60)
    assert "this cache holds 4" in result["error"]
    assert torch.equal(logits, alone(gen.lm, [(gen.prompt_ids(PROMPTS[0]), 1)])[0])


def test_server_batches_concurrent_requests_and_each_gets_its_own_text():
    """genlab serve --batch 4: four requests at once, streamed and not, get the text each gets alone."""
    from conftest import start_server
    from genlab.server.app import ServerConfig, create_app

    s = start_server(create_app(ServerConfig(text_models=["smollm2-135m-instruct"], image_models=[], batch=4, queue=0)))
    try:
        def ask(http, i):
            body = {"messages": [{"role": "user", "content": PROMPTS[i]}], "max_tokens": 24, "seed": i}
            if i % 2:
                return http.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
            with http.stream("POST", "/v1/chat/completions", json=dict(body, stream=True)) as r:
                import json

                chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
                return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])

        with httpx.Client(base_url=s.url, timeout=120) as http:
            one_by_one = [ask(http, i) for i in range(4)]
            before = http.get("/v1/genlab/stats").json()
            together = [None] * 4
            threads = [threading.Thread(target=lambda i=i: together.__setitem__(i, ask(http, i))) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            after = http.get("/v1/genlab/stats").json()
        assert together == one_by_one  # 4 at once with queue 0: none was refused, and each text is its own
        assert after["batch"] == 4
        passes, calls = after["batched_passes"] - before["batched_passes"], after["batched_calls"] - before["batched_calls"]
        assert passes < calls
    finally:
        s.stop()
