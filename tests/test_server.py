"""The OpenAI-compatible server, called through the official `openai` SDK on a real loopback server.

Parity: the same seed gives the same text as TextGenerator and the same PNG bytes as
ImageGenerator and `genlab image`. Robustness: errors in OpenAI's shape, 413, 429 with
Retry-After, a disconnect stops its generation, a failing request leaves the server up.
"""

import base64
import io
import json
import os
import re
import subprocess
import sys
import threading
import time

import httpx
from PIL import Image
import pytest

openai = pytest.importorskip("openai")

TEXT = "smollm2-135m-instruct"
HI = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def text_gen(server):
    return server.app.state.models.text[TEXT]


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _stats(server) -> dict:
    return httpx.get(server.url + "/v1/genlab/stats").json()


def _wait_idle(server, timeout=30.0) -> dict:
    deadline = time.time() + timeout
    while (s := _stats(server))["running_or_waiting"] and time.time() < deadline:
        time.sleep(0.05)
    return s


# -- discovery -------------------------------------------------------------------------------------------

def test_health_and_models(server, client):
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {TEXT, "pydoc-gpt", "pydoc-mdlm", "digits", "digits-distilled", "shapes", "digits-gan",
                           "digits-ar", "all-minilm-l6-v2"}  # every bundled model, and the sentence encoder (embeddings)
    assert models[TEXT].kind == "text" and models["digits"].kind == "image"
    assert models["digits"].size == "16x16" and models["shapes"].size == "32x32"
    assert client.models.retrieve("shapes").id == "shapes"


# -- text ------------------------------------------------------------------------------------------------

def test_chat_matches_python_api(client, text_gen):
    answer = client.chat.completions.create(model=TEXT, messages=HI, max_tokens=24, seed=3, temperature=0.7)
    expected = text_gen.complete(messages=HI, max_new_tokens=24, seed=3, temperature=0.7)
    assert answer.choices[0].message.content == expected.text != ""
    assert answer.choices[0].finish_reason == expected.finish_reason
    assert answer.usage.prompt_tokens == expected.stats.prompt_tokens
    assert answer.usage.completion_tokens == expected.stats.completion_tokens
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


def test_explicit_nulls_are_defaults(server):
    body = {"messages": HI, "max_tokens": 3, "seed": 1, "n": None, "stream": None, "logprobs": None,
            "frequency_penalty": None, "presence_penalty": None}
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200 and len(r.json()["choices"]) == 1, r.text


def test_chat_n_uses_consecutive_seeds(client):
    both = client.chat.completions.create(model=TEXT, messages=HI, max_tokens=12, seed=10, n=2, temperature=1.0)
    second = client.chat.completions.create(model=TEXT, messages=HI, max_tokens=12, seed=11, temperature=1.0)
    assert [c.index for c in both.choices] == [0, 1]
    assert both.choices[1].message.content == second.choices[0].message.content
    assert both.choices[0].message.content != both.choices[1].message.content


def test_streaming_chat_equals_the_whole_answer(client):
    whole = client.chat.completions.create(model=TEXT, messages=HI, max_tokens=30, seed=5)
    chunks = list(client.chat.completions.create(model=TEXT, messages=HI, max_tokens=30, seed=5, stream=True,
                                                 stream_options={"include_usage": True}))
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) > 5  # it really streamed, piece by piece
    assert "".join(content) == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == \
        [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_chat_logprobs_are_the_models_distribution(client, text_gen):
    import torch

    answer = client.chat.completions.create(model=TEXT, messages=HI, max_tokens=6, temperature=0, logprobs=True,
                                            top_logprobs=3)
    content = answer.choices[0].logprobs.content
    assert len(content) == answer.usage.completion_tokens
    assert "".join(t.token for t in content).startswith(answer.choices[0].message.content)
    ids = text_gen.prompt_ids(messages=HI)
    logits = text_gen.lm.forward(ids, text_gen.lm.new_cache(len(ids) + 1))
    top = logits.log_softmax(-1).topk(3)
    first = content[0]
    assert [t.token for t in first.top_logprobs] == [text_gen.tokenizer.token_text(int(i)) for i in top.indices]
    assert [t.logprob for t in first.top_logprobs] == pytest.approx(top.values.tolist(), abs=1e-4)
    assert first.token == first.top_logprobs[0].token and first.logprob == first.top_logprobs[0].logprob  # greedy
    for t in content:
        probs = [torch.tensor(c.logprob).exp().item() for c in t.top_logprobs]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-5


def test_completions_with_logprobs(client, text_gen):
    prompt = "The capital of France is"
    answer = client.completions.create(model=TEXT, prompt=prompt, max_tokens=8, seed=1, logprobs=2)
    expected = text_gen.complete(prompt, raw=True, max_new_tokens=8, seed=1)
    choice = answer.choices[0]
    assert choice.text == expected.text and answer.object == "text_completion"
    lp = choice.logprobs
    assert "".join(lp.tokens) == choice.text and len(lp.token_logprobs) == 8
    assert all(len(t) <= 2 for t in lp.top_logprobs) and lp.text_offset[0] == len(prompt)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=TEXT, prompt=prompt, max_tokens=8, seed=1, stream=True) if c.choices)
    assert streamed == choice.text
    default = client.completions.create(model=TEXT, prompt=prompt, seed=1, temperature=0)
    assert default.usage.completion_tokens <= 16  # OpenAI's default max_tokens for completions


def test_stop_strings_and_extensions(client, text_gen):
    answer = client.chat.completions.create(model=TEXT, messages=HI, max_tokens=40, seed=2, stop=[","],
                                            extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1})
    expected = text_gen.complete(messages=HI, max_new_tokens=40, seed=2, stop=[","], top_k=20, min_p=0.05,
                                 repetition_penalty=1.1)
    assert answer.choices[0].message.content == expected.text and "," not in expected.text


def test_speculative_extension_and_its_counts_in_usage(client, text_gen):
    messages = [{"role": "user", "content": "Repeat exactly: one two three four five six seven eight nine ten"}]
    answer = client.chat.completions.create(model=TEXT, messages=messages, max_tokens=30, temperature=0,
                                            extra_body={"speculative": "lookup"})
    plain = client.chat.completions.create(model=TEXT, messages=messages, max_tokens=30, temperature=0,
                                           extra_body={"speculative": "off"})
    expected = text_gen.complete(messages=messages, max_new_tokens=30, temperature=0, speculative="lookup")
    assert answer.choices[0].message.content == plain.choices[0].message.content == expected.text
    kept = answer.usage.model_extra["speculative"]
    assert kept == {"draft_tokens": expected.stats.draft_tokens, "accepted_tokens": expected.stats.accepted_tokens}
    assert 0 < kept["accepted_tokens"] <= kept["draft_tokens"]
    assert plain.usage.model_extra["speculative"] == {"draft_tokens": 0, "accepted_tokens": 0}


# -- images ----------------------------------------------------------------------------------------------

def test_images_match_python_api_and_cli(server, client, tmp_path):
    answer = client.images.generate(model="digits", prompt="7", n=2, extra_body={"seed": 0, "steps": 10})
    pngs = [base64.b64decode(d.b64_json) for d in answer.data]
    gen = server.app.state.models.image["digits"]
    expected = gen.generate("7", n=2, steps=10, seed=0)
    assert pngs == [_png(im) for im in expected]
    one = client.images.generate(model="digits", prompt="7", response_format="b64_json", size="16x16",
                                 extra_body={"seed": 0, "steps": 10})
    out = tmp_path / "seven.png"
    subprocess.run([sys.executable, "-m", "genlab", "image", "7", "--model", "digits", "--steps", "10", "--seed", "0",
                    "--out", str(out)], check=True, capture_output=True, env=dict(os.environ, GENLAB_QUIET="1"))
    assert base64.b64decode(one.data[0].b64_json) == out.read_bytes() == _png(gen.generate("7", steps=10, seed=0)[0])


def test_image_defaults_are_the_models_own(server, client):
    """A request without steps or sampler gets the model's own, as the Python API and the CLI do:
    the bundled shapes model's card says DDPM and 50 steps, and the picture is the API's."""
    card = httpx.get(server.url + "/v1/models/shapes").json()
    assert (card["default_sampler"], card["default_steps"], card["default_guidance"]) == ("ddpm", 50, 5.0)
    answer = client.images.generate(model="shapes", prompt="two red circles", extra_body={"seed": 5})
    gen = server.app.state.models.image["shapes"]
    assert base64.b64decode(answer.data[0].b64_json) == _png(gen.generate("two red circles", seed=5)[0])
    assert answer.model_extra["timings"]["model_calls"] == 50


def test_image_model_picked_from_the_prompt(client):
    answer = client.images.generate(prompt="a red circle", extra_body={"seed": 1, "steps": 8})
    assert Image.open(io.BytesIO(base64.b64decode(answer.data[0].b64_json))).size == (32, 32)  # shapes
    answer = client.images.generate(prompt="a handwritten 3", extra_body={"seed": 1, "steps": 8})
    assert Image.open(io.BytesIO(base64.b64decode(answer.data[0].b64_json))).size == (16, 16)  # digits


def test_image_stream_previews_then_the_same_picture(server, client):
    body = {"prompt": "a blue square", "model": "shapes", "seed": 4, "steps": 6}
    events = []
    with httpx.stream("POST", server.url + "/v1/images/generations", json=dict(body, stream=True), timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    events = [json.loads(x) for x in lines[:-1]]
    partial = [e for e in events if e["type"] == "image_generation.partial_image"]
    assert [e["step"] for e in partial] == list(range(1, 7)) and all(e["xt_b64_json"] for e in partial)
    [done] = [e for e in events if e["type"] == "image_generation.completed"]
    whole = client.images.generate(**{k: body[k] for k in ("prompt", "model")}, extra_body={"seed": 4, "steps": 6})
    assert done["b64_json"] == whole.data[0].b64_json
    assert done["timings"]["model_calls"] == 6 and done["timings"]["s_per_step"] > 0
    pixels = [Image.open(io.BytesIO(base64.b64decode(e["b64_json"]))).tobytes() for e in (partial[-1], done)]
    assert pixels[0] == pixels[1]  # the last step's x0 guess is the picture (which also carries its receipt)
    few = httpx.post(server.url + "/v1/images/generations", json=dict(body, stream=True, partial_images=2), timeout=120)
    assert [json.loads(x[6:])["step"] for x in few.text.split("\n\n") if '"image_generation.partial_image"' in x] == [3, 6]


# -- bad input ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("route, body, status, param, words", [
    ("/v1/chat/completions", {"messages": []}, 422, "messages", "at least 1"),
    ("/v1/chat/completions", {"messages": HI, "max_tokens": 5000}, 400, None, "at most 1024"),
    ("/v1/chat/completions", {"messages": HI, "temperature": -1}, 400, "temperature", "temperature must be a finite number between 0 and 100, got -1"),
    ("/v1/chat/completions", {"messages": HI, "model": "digits"}, 404, "model", "is an image model"),
    ("/v1/chat/completions", {"messages": HI, "tools": []}, 422, "tools", "unknown field"),
    ("/v1/chat/completions", {"messages": HI, "top_logprobs": 3}, 400, None, "needs logprobs"),
    ("/v1/chat/completions", {"messages": HI, "speculative": "always"}, 400, "speculative", "speculative must be one of off, lookup, draft, auto"),
    ("/v1/chat/completions", {"messages": HI, "speculative": "draft"}, 400, "speculative", "speculative draft needs a draft model, and this server"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, None, "'text'"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": ["text"], "text": "hi"}]}]}, 400, None,
     "must be of type 'text'; got [\"text\"]"),
    ("/v1/completions", {"prompt": ["hi"] * 20, "n": 16, "max_tokens": 1}, 400, None, "20 prompts times n 16 is 320"),
    ("/v1/completions", {"prompt": "x", "echo": True}, 422, "echo", "not supported"),
    ("/v1/completions", {"prompt": "x", "logit_bias": {"abc": 1}}, 400, "logit_bias", "logit_bias keys must be token ids (integers as strings), got 'abc'"),
    ("/v1/chat/completions", {"messages": HI, "logit_bias": {"5": 500}}, 400, "logit_bias",
     "logit_bias values must be numbers between -100 and 100, got 500.0 for token 5"),
    ("/v1/chat/completions", {"messages": HI, "logit_bias": {"999999": 1}}, 400, "logit_bias",
     "logit_bias names token 999999, outside this model's vocabulary (token ids 0 to 49151)"),
    ("/v1/completions", {"prompt": "x", "logprobs": 9}, 400, None, "between 0 and 5"),
    ("/v1/chat/completions", {"messages": HI, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "array", "uniqueItems": True}}}}, 400, "response_format", "response_format is invalid or unsupported: keywords "
     "genlab's grammar engine (llguidance) does not implement: [\"uniqueItems\"]"),
    ("/v1/chat/completions", {"messages": HI, "response_format": {"type": "json_schema"}}, 400, "response_format",
     "response_format of type json_schema needs a json_schema"),
    ("/v1/chat/completions", {"messages": HI, "response_format": {"type": "yaml"}}, 422, "response_format.type", "json_schema"),
    ("/v1/completions", {"prompt": "x", "regex": "[a-"}, 400, "regex", "regex is invalid or unsupported: invalid regex \"[a-\": unclosed character class"),
    ("/v1/completions", {"prompt": "x", "regex": "a", "choice": ["a"]}, 400, "regex", "give one output format at a time, not regex and choice"),
    ("/v1/completions", {"prompt": "x", "grammar": "start: nothing"}, 400, "grammar", "grammar is invalid or unsupported: unknown name: \"nothing\""),
    ("/v1/completions", {"prompt": "x", "model": "pydoc-mdlm", "choice": ["a", "b"]}, 400, "choice",
     "cannot honour choice (a grammar reads the text left to right)"),
    ("/v1/chat/completions", {"messages": HI, "guidance_scale": -2}, 400, "guidance_scale",
     "guidance_scale must be a finite number between 0 and 100, got -2"),
    ("/v1/chat/completions", {"messages": HI, "negative_prompt": "x"}, 400, "negative_prompt",
     "negative_prompt works through guidance: give a guidance_scale other than 1"),
    ("/v1/images/generations", {"prompt": "hello", "model": "digits"}, 400, None, "names none of them"),
    ("/v1/images/generations", {"prompt": "7", "size": "1024x1024"}, 400, None, "draws 16x16"),
    ("/v1/images/generations", {"prompt": "7", "response_format": "url"}, 422, "response_format", "b64_json"),
    ("/v1/images/generations", {"prompt": "7", "model": "sd"}, 404, "model", "digits, digits-distilled, shapes"),
    ("/v1/images/generations", {"prompt": "7", "n": 50}, 400, None, "between 1 and 8"),
    ("/v1/images/generations", {"prompt": "7", "sampler": "plms"}, 400, None, "ddpm, ddim"),
    ("/v1/images/generations", {"prompt": "7", "steps": 0}, 400, "steps", "steps must be an integer of at least 1, got 0"),
    ("/v1/images/generations", {"prompt": "7", "guidance_scale": -1}, 400, "guidance_scale", "guidance_scale must be a finite number between 0 and 100"),
    ("/v1/images/generations", {"prompt": "7", "model": "digits-distilled", "guidance_scale": 3}, 400, "guidance_scale",
     "guidance_scale must be 1 or left out for this model, which has its teacher's scale 1.25 distilled in"),
    ("/v1/images/generations", {"prompt": "a cat sitting on a sofa", "model": "shapes"}, 400, None,
     "'a cat sitting on a sofa' names nothing this text-to-image model can draw: it knows circles, squares and triangles"),
])
def test_bad_input_is_one_clear_openai_error(server, route, body, status, param, words):
    r = httpx.post(server.url + route, json=body, timeout=60)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert words in error["message"] and "\n" not in error["message"] and error["param"] == param
    # fields by the names an HTTP caller sends, never the CLI's flags (a server's own limit may name its launch flag)
    assert "--" not in error["message"].replace("(its --max-tokens)", "")


def test_sdk_raises_its_own_error_types(client):
    with pytest.raises(openai.NotFoundError, match="not found"):
        client.chat.completions.create(model="gpt-4o", messages=HI)
    with pytest.raises(openai.BadRequestError, match="at most 1024"):
        client.chat.completions.create(model=TEXT, messages=HI, max_tokens=4096)


def test_malformed_json_unknown_route_and_huge_body(server):
    r = httpx.post(server.url + "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "not valid JSON" in r.json()["error"]["message"]
    assert httpx.get(server.url + "/v1/nothing").json()["error"]["code"] == "not_found"
    big = json.dumps({"prompt": "a" * (2 << 20)}).encode()
    r = httpx.post(server.url + "/v1/completions", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]

    def chunked():
        yield big

    r = httpx.post(server.url + "/v1/completions", content=chunked(), headers={"content-type": "application/json"})
    assert r.status_code == 413


# -- capacity, disconnects, failures -----------------------------------------------------------------------

def test_queue_is_bounded_and_a_disconnect_frees_its_slot(server):
    """concurrency 1, queue 2: one running stream + two waiting requests fill it; the fourth gets 429.
    Closing the running stream stops its generation, and the waiting two are then served."""
    before = _wait_idle(server)
    long = {"messages": [{"role": "user", "content": "Write a long story about the sea."}], "max_tokens": 1000,
            "stream": True, "temperature": 1.0, "seed": 0}
    results = []
    with httpx.Client(base_url=server.url, timeout=120) as http:
        with http.stream("POST", "/v1/chat/completions", json=long) as stream:
            lines = stream.iter_lines()
            assert next(line for line in lines if '"content"' in line)  # it is generating
            waiting = [threading.Thread(target=lambda: results.append(http.post(
                "/v1/chat/completions", json={"messages": HI, "max_tokens": 4, "seed": 0}).status_code)) for _ in range(2)]
            for t in waiting:
                t.start()
            deadline = time.time() + 10
            while _stats(server)["running_or_waiting"] < 3 and time.time() < deadline:
                time.sleep(0.05)
            busy = http.post("/v1/chat/completions", json={"messages": HI, "max_tokens": 4})
            assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
            assert busy.json()["error"]["code"] == "server_busy"
        t0 = time.time()  # the stream is closed here, long before its 1000 tokens
        for t in waiting:
            t.join(60)
    assert results == [200, 200] and time.time() - t0 < 30
    after = _wait_idle(server)
    assert after["cancelled"] == before["cancelled"] + 1 and after["rejected"] == before["rejected"] + 1
    assert after["running_or_waiting"] == 0


def test_a_failing_generation_does_not_take_the_server_down(server, client, text_gen):
    """Fault injection: the model raises mid-generation. The request gets a 500 in OpenAI's shape (or an
    error event in a stream), and the next request is served normally."""
    class Broken:
        tokenizer, room, check_fits, prompt_ids = text_gen.tokenizer, text_gen.room, text_gen.check_fits, text_gen.prompt_ids
        unmasker, lm = text_gen.unmasker, text_gen.lm

        def complete(self, *args, **kwargs):
            raise RuntimeError("injected fault")

        def stream(self, *args, **kwargs):
            yield from text_gen.stream(*args, **dict(kwargs, params=kwargs["params"]))
            raise RuntimeError("injected fault")

    models = server.app.state.models.text
    models[TEXT] = Broken()
    try:
        r = httpx.post(server.url + "/v1/chat/completions", json={"messages": HI, "max_tokens": 3}, timeout=60)
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
        assert "injected fault" in r.json()["error"]["message"]
        r = httpx.post(server.url + "/v1/chat/completions", json={"messages": HI, "max_tokens": 3, "stream": True},
                       timeout=60)
        assert r.status_code == 200 and '"error"' in r.text and r.text.rstrip().endswith("data: [DONE]")
    finally:
        models[TEXT] = text_gen
    assert client.chat.completions.create(model=TEXT, messages=HI, max_tokens=3).choices[0].message.content
    assert _wait_idle(server)["running_or_waiting"] == 0


def test_health_is_503_while_loading():
    from conftest import start_server
    from genlab.server.app import ServerConfig, create_app

    s = start_server(create_app(ServerConfig(text_models=[TEXT], image_models=["digits"]), load=False), ready=False)
    try:
        r = httpx.get(s.url + "/health")
        assert r.status_code == 503 and r.json() == {"status": "loading"} and r.headers["retry-after"]
        r = httpx.post(s.url + "/v1/images/generations", json={"prompt": "7"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "loading"
        assert [m["ready"] for m in httpx.get(s.url + "/v1/models").json()["data"]] == [False, False, False]  # + MiniLM
        s.app.state.models.config.text_models = []  # load only the digits model: fast
        s.app.state.models.load()
        assert httpx.get(s.url + "/health").status_code == 200
        assert httpx.post(s.url + "/v1/images/generations", json={"prompt": "7", "steps": 2}).status_code == 200
    finally:
        s.stop()


# -- the command -------------------------------------------------------------------------------------------

def _genlab(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "genlab", *args], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, GENLAB_QUIET="1"), **kwargs)


@pytest.mark.parametrize("args, words", [
    (["--image-model", "nope", "--no-text"], "--image-model nope: unknown model 'nope'"),
    (["--text-model", "owner/not-cached", "--no-image"], "not in the local Hugging Face cache"),
    (["--concurrency", "0"], "--concurrency must be at least 1"),
    (["--batch", "0"], "--batch must be between 1 and 64"),
    (["--port", "70000"], "--port must be between"),
])
def test_serve_bad_options_exit_2(args, words):
    r = _genlab("serve", *args)
    assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0


def test_a_foreign_host_name_and_a_malformed_request_get_json_errors(server):
    """DNS rebinding: a loopback server answers only loopback Host names. A request uvicorn cannot parse
    (Content-Length: abc) still gets OpenAI's error shape."""
    import socket

    port = int(server.url.rsplit(":", 1)[1])
    for host, status in (("evil.example", 400), ("evil.example:80", 400), (f"localhost:{port}", 200), (f"[::1]:{port}", 200)):
        r = httpx.get(server.url + "/v1/models", headers={"Host": host})
        assert r.status_code == status, host
        if status == 400:
            assert r.json()["error"]["code"] == "host_not_allowed" and "--allowed-host" in r.json()["error"]["message"]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: abc\r\n\r\n")
        reply = b""
        while chunk := sock.recv(4096):  # the server closes the connection after its answer
            reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head
    assert json.loads(body)["error"]["message"].startswith("malformed HTTP request")
    assert httpx.get(server.url + "/health").status_code == 200  # and the server keeps answering


def test_allowed_hosts():
    from genlab.server.guards import allowed_hosts, host_name

    assert allowed_hosts("127.0.0.1", []) == {"localhost", "127.0.0.1", "::1"}
    assert "genlab.lan" in allowed_hosts("::1", ["GenLab.lan"])
    assert allowed_hosts("0.0.0.0", []) is None  # served to the network: every name is answered
    assert [host_name(h) for h in ("localhost:8000", "[::1]:8000", "example.com", "::1")] == ["localhost", "::1", "example.com", "::1"]


def test_serve_command_runs_a_server(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        taken = _genlab("serve", "--port", str(port), "--no-text", "--image-model", "digits")
        assert taken.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in taken.stderr
        assert "serving" not in taken.stdout and "genlab serve:" not in taken.stdout  # no banner before the error
    proc = subprocess.Popen([sys.executable, "-m", "genlab", "serve", "--port", str(port), "--no-text", "--image-model",
                             "digits", "--log-level", "warning"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline, status = time.time() + 120, None
        while time.time() < deadline and status != 200:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/health").status_code
            except httpx.TransportError:
                time.sleep(0.3)
        assert status == 200
        r = httpx.post(f"http://127.0.0.1:{port}/v1/images/generations", json={"prompt": "seven", "seed": 0, "steps": 5},
                       timeout=120)
        assert r.status_code == 200 and r.json()["seed"] == 0
        assert "<title>genlab</title>" in httpx.get(f"http://127.0.0.1:{port}/").text
    finally:
        proc.terminate()
        proc.wait(30)


def test_structured_output_through_the_sdk(client, text_gen):
    """OpenAI's response_format (json_schema and json_object) and the regex/choice extensions, streamed or not:
    the reply is valid, and is the Python API's text for the same seed."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                               "population": {"type": "integer", "minimum": 0}},
              "required": ["city", "population"]}
    ask = [{"role": "user", "content": "Give a big city and its population as JSON."}]
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": True}}
    r = client.chat.completions.create(model=TEXT, messages=ask, seed=4, response_format=fmt, logprobs=True, top_logprobs=2)
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    assert r.choices[0].finish_reason == "stop" and len(r.choices[0].logprobs.content) >= r.usage.completion_tokens - 1
    assert r.choices[0].message.content == text_gen.chat(ask, seed=4, json_schema=schema)
    stream = client.chat.completions.create(model=TEXT, messages=ask, seed=4, response_format=fmt, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == r.choices[0].message.content
    r = client.chat.completions.create(model=TEXT, messages=ask, seed=2, response_format={"type": "json_object"}, max_tokens=200)
    assert r.choices[0].finish_reason != "stop" or isinstance(json.loads(r.choices[0].message.content), dict)
    r = client.completions.create(model=TEXT, prompt="The year the Berlin wall fell:", seed=1, max_tokens=8,
                                  extra_body={"regex": r"19\d\d"})
    assert re.fullmatch(r"19\d\d", r.choices[0].text)
    r = client.chat.completions.create(model=TEXT, messages=[{"role": "user", "content": "Is ice cold?"}], seed=1,
                                       extra_body={"choice": ["yes", "no"]})
    assert r.choices[0].message.content in ("yes", "no")


def test_text_guidance_through_the_sdk(client, text_gen):
    ask = [{"role": "user", "content": "Name a colour and say why you like it."}]
    kw = dict(temperature=0, max_tokens=16, seed=0)
    r = client.chat.completions.create(model=TEXT, messages=ask, **kw,
                                       extra_body={"guidance_scale": 3, "negative_prompt": "Name a colour: blue."})
    want = text_gen.chat(ask, temperature=0, max_new_tokens=16, seed=0, guidance_scale=3, negative_prompt="Name a colour: blue.")
    assert r.choices[0].message.content == want != text_gen.chat(ask, temperature=0, max_new_tokens=16, seed=0)


def test_logit_bias_steers_the_reply_as_openai_defines_it(client):
    from genlab.text.generator import TextGenerator

    [blue] = TextGenerator(TEXT).tokenizer.encode(" blue")
    r = client.chat.completions.create(model=TEXT, messages=HI, max_tokens=3, temperature=0, logit_bias={str(blue): 100})
    assert r.choices[0].message.content.strip() == "blue blue blue"
    both = {str(blue): 100, str(TextGenerator(TEXT).tokenizer.encode(" red")[0]): 100}  # a tie at +100: the model decides
    r = client.chat.completions.create(model=TEXT, messages=HI, max_tokens=3, temperature=0, logit_bias=both)
    assert set(r.choices[0].message.content.split()) <= {"blue", "red"}
