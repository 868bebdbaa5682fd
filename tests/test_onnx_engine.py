"""The 4-bit CPU engine (text/onnx_llama.py) on the bundled SmolLM2 GGUF: exact repacking of the
GGUF's blocks, quality against the float engine, logits that do not depend on the pass, and one
clear line for every engine choice it cannot serve."""

import math

import numpy as np
import pytest
import torch

from genlab.text import gguf_blocks, onnx_llama
from genlab.text.sources import DEFAULT_TEXT_MODEL, bundled_file

pytestmark = pytest.mark.skipif(not onnx_llama.available(), reason="onnxruntime is not installed")


@pytest.fixture(scope="module")
def engines():
    from genlab import TextGenerator

    return TextGenerator(engine="onnx"), TextGenerator(engine="torch", dtype="float32")


@pytest.fixture(scope="module")
def weights():
    return gguf_blocks.GgufWeights(bundled_file(DEFAULT_TEXT_MODEL))


def test_gguf_blocks_repack_exactly(weights):
    from gguf.quants import dequantize

    kinds = set()
    for name in ("blk.0.attn_q.weight", "blk.3.ffn_down.weight", "blk.7.ffn_gate.weight", "token_embd.weight"):
        t = weights.tensors[name]
        kind = t.tensor_type.name
        kinds.add(kind)
        packed = (gguf_blocks.q4_1 if kind == "Q4_1" else gguf_blocks.q8_0)(weights._blocks(name))
        reference = dequantize(t.data, t.tensor_type).reshape(t.data.shape[0], -1)
        assert np.allclose(gguf_blocks.dequantize(packed), reference, rtol=0, atol=2e-6 * np.abs(reference).max()), name
    assert kinds == {"Q4_1", "Q8_0"}  # both of the bundled file's block types were checked


def test_float_weights_quantise_within_a_step():
    w = np.random.default_rng(0).standard_normal((64, 96)).astype(np.float32)
    four, eight = gguf_blocks.quantize_4bit(w), gguf_blocks.quantize_8bit(w)
    step4 = np.repeat(four.scale, 32, axis=1)  # one quantisation step per weight (w = step*q + block minimum)
    assert np.all(np.abs(gguf_blocks.dequantize(four) - w) <= step4 / 2 + 1e-6)
    assert np.abs(gguf_blocks.dequantize(eight) - w).max() < np.abs(w).max() / 127


def perplexity(lm, ids: list[int]) -> float:
    logits = lm.forward_all(ids, lm.new_cache(len(ids)), len(ids) - 1)  # after each token but the last
    nll = torch.nn.functional.cross_entropy(logits[:-1] if len(logits) == len(ids) else logits, torch.tensor(ids[1:]))
    return math.exp(float(nll))


def test_held_out_perplexity_within_two_percent_of_float32(engines):
    from pydoc_data.topics import topics

    onnx, fp32 = engines
    ids = onnx.tokenizer.encode(topics["while"] + topics["with"])[:300]
    ratio = perplexity(onnx.lm, ids) / perplexity(fp32.lm, ids)
    assert 1.0 - 0.02 < ratio <= 1.02, ratio


def test_greedy_text_matches_float32_on_parity_prompts(engines):
    onnx, fp32 = engines
    same = 0
    for prompt in ("The capital of France is", "Name three primary colours.", "What is 2 + 2?"):
        a = [t.token_id for t in onnx.complete(prompt, temperature=0, max_new_tokens=8).tokens]
        b = [t.token_id for t in fp32.complete(prompt, temperature=0, max_new_tokens=8).tokens]
        same += a[:4] == b[:4]
    assert same >= 2  # 4-bit weights may part ways after a near tie; the openings agree


def test_a_tokens_logits_do_not_depend_on_its_pass(engines):
    onnx, _ = engines
    lm = onnx.lm
    ids = onnx.prompt_ids("Write a short story about a robot.")
    more = [512, 1000, 2000, 300, 45]
    one = lm.new_cache(64)
    lm.forward(ids, one)
    single = torch.stack([lm.forward([t], one) for t in more])
    together = lm.new_cache(64)
    lm.forward(ids, together)
    assert torch.equal(lm.forward_all(more, together, len(more)), single)
    lm.rewind(together, len(ids) + 2)  # forget the last three, then write them again
    assert torch.equal(lm.forward_all(more[2:], together, 3), single[2:])


def test_greedy_speculative_text_is_plain_text_on_both_engines(engines):
    prompt = "Repeat this sentence exactly: the quick brown fox jumps over the lazy dog near the river bank."
    for gen in engines:
        plain = gen.complete(prompt, temperature=0, max_new_tokens=40, speculative="off")
        fast = gen.complete(prompt, temperature=0, max_new_tokens=40, speculative="lookup")
        assert [t.token_id for t in fast.tokens] == [t.token_id for t in plain.tokens]
        assert [round(t.logprob, 3) for t in fast.tokens] == [round(t.logprob, 3) for t in plain.tokens]
        assert plain.stats.draft_tokens == 0 and fast.stats.accepted_tokens >= 5  # the copied words were guessed


def test_auto_engine_is_measured_once_and_kept(engines):
    import json

    from genlab import TextGenerator
    from genlab.store import genlab_home

    auto = TextGenerator()  # engine auto: measures once, then reads the answer back
    saved = json.loads((genlab_home() / "cpu_engine.json").read_text())
    assert saved["engine"] in ("onnx", "torch") and saved["onnx_s"] > 0 and saved["torch_s"] > 0
    assert auto.lm.engine == saved["engine"]
    assert engines[0].lm.engine == "onnx" and engines[0].lm.dtype == "4-bit"


@pytest.mark.parametrize("args,fragment", [
    (["--engine", "bogus"], "unknown --engine 'bogus'; accepted: auto, onnx, torch"),
    (["--engine", "onnx", "--dtype", "float32"], "--dtype float32 needs --engine torch"),
    (["--engine", "onnx", "--model", "pydoc-gpt"], "--engine onnx runs GGUF models"),
    (["--speculative", "sometimes"], "--speculative must be one of off, lookup, draft, auto, got 'sometimes'"),
    (["--speculative", "lookup", "--model", "pydoc-mdlm"], "--speculative lookup and draft guess for causal LMs"),
])
def test_engine_and_speculative_bad_input_is_one_line(args, fragment, capsys):
    from test_cli import assert_one_line_error, run

    code, _, err = run(["text", "hi", "-n", "2", *args], capsys)
    assert_one_line_error(code, err, fragment)


def test_engine_not_installed_is_one_line(monkeypatch, capsys):
    from test_cli import assert_one_line_error, run

    monkeypatch.setattr(onnx_llama, "available", lambda: False)
    code, _, err = run(["text", "hi", "-n", "2", "--engine", "onnx"], capsys)
    assert_one_line_error(code, err, "--engine onnx needs onnxruntime and onnx, which are not installed here")


def test_adapter_is_merged_then_quantised(engines, tmp_path):
    """--adapter on the 4-bit engine: the LoRA update is merged into float weights, the changed layers are
    quantised afresh (to 8 bits), and the result follows the float32 engine with the same adapter."""
    import peft
    from transformers import AutoModelForCausalLM

    from genlab import TextGenerator
    from genlab.lora.adapter import lora_config
    from genlab.text.sources import resolve

    base = AutoModelForCausalLM.from_pretrained(resolve(DEFAULT_TEXT_MODEL), dtype=torch.float32)
    torch.manual_seed(0)  # PEFT draws A
    model = peft.get_peft_model(base, lora_config(base, 4, 8.0, 0.0, "q_proj,v_proj,down_proj"))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    model.peft_config["default"].base_model_name_or_path = DEFAULT_TEXT_MODEL
    model.save_pretrained(str(tmp_path / "adapter"))

    adapted = TextGenerator(adapter=str(tmp_path / "adapter"), engine="onnx").lm
    reference = TextGenerator(adapter=str(tmp_path / "adapter"), engine="torch", dtype="float32").lm
    plain = engines[0].lm
    ids = engines[0].prompt_ids("Name three primary colours.")
    a, r, p = (lm.forward(ids, lm.new_cache(64)) for lm in (adapted, reference, plain))
    base = engines[1].lm.forward(ids, engines[1].lm.new_cache(64))

    def kl(x, y):  # KL(softmax(y) || softmax(x)): how far x's next-token distribution is from y's
        return float(torch.nn.functional.kl_div(x.log_softmax(0), y.log_softmax(0), log_target=True, reduction="sum"))

    assert kl(base, r) > 0.1  # the adapter changes the model's next-token distribution ...
    assert kl(a, r) < 0.1 * kl(p, r)  # ... and the 4-bit engine with it follows the float model with it
    assert kl(a, r) < 2 * kl(p, base)  # as closely as the 4-bit engine follows the float one without it
