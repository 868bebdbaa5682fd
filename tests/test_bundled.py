"""The real bundled SmolLM2-135M-Instruct (slow: the first use converts the GGUF, ~30 s)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from genlab.text.sources import DEFAULT_TEXT_MODEL, bundled_file, cache_folder, converted_gguf, resolve

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folder():
    return resolve(DEFAULT_TEXT_MODEL)


def test_conversion_is_a_complete_hf_folder(folder):
    from genlab.registry import count_parameters

    assert {"config.json", "model.safetensors", "tokenizer.json", "genlab-manifest.json"} <= {p.name for p in folder.iterdir()}
    assert count_parameters(folder) == 134_515_008  # SmolLM2-135M, tied embeddings counted once


def test_greedy_tokens_identical_to_transformers_generate(folder):
    from transformers import AutoModelForCausalLM

    from genlab.autoregressive.decode import decode
    from genlab.text.engine import load_language_model
    from genlab.autoregressive.sampling import SamplingParams

    lm = load_language_model(folder, device="cpu", dtype="float32")
    ref = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    prompt = lm.tokenizer.encode(lm.tokenizer.chat_prompt([{"role": "user", "content": "What is a transformer?"}]))
    want = ref.generate(torch.tensor([prompt]), max_new_tokens=48, do_sample=False)[0, len(prompt):].tolist()
    got = [s.token_id for s in decode(lm, prompt, SamplingParams(max_new_tokens=48, temperature=0), seed=0)]
    assert got == want


def test_tokenizer_and_chat_template_match_transformers(folder):
    from test_tokenizer import assert_same_as_transformers

    assert_same_as_transformers(folder)


def test_half_precision_default_writes_the_same_greedy_opening(folder):
    from genlab import TextGenerator

    fp32 = TextGenerator(dtype="float32").generate("Name three primary colours.", temperature=0, max_new_tokens=12)
    auto = TextGenerator().generate("Name three primary colours.", temperature=0, max_new_tokens=12)
    assert auto.split()[:4] == fp32.split()[:4]


def test_same_seed_same_text_cli_and_api(folder):
    from genlab import TextGenerator

    cmd = [sys.executable, "-m", "genlab", "text", "Write one sentence about the sea.", "--seed", "11",
           "--temperature", "0.9", "--max-new-tokens", "30", "--json"]
    runs = [json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=300).stdout) for _ in range(2)]
    assert runs[0]["text"] == runs[1]["text"] and len(runs[0]["text"]) > 20
    api = TextGenerator().generate("Write one sentence about the sea.", seed=11, temperature=0.9, max_new_tokens=30)
    assert api == runs[0]["text"]


def test_corrupt_cache_is_rebuilt_not_loaded(folder):
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes()[: weights.stat().st_size // 2])  # a torn write
    weights.write_bytes(bytes(data))
    rebuilt = converted_gguf(bundled_file(DEFAULT_TEXT_MODEL))
    assert rebuilt == cache_folder(bundled_file(DEFAULT_TEXT_MODEL))
    assert (rebuilt / "model.safetensors").stat().st_size > len(data)
    from genlab import TextGenerator

    assert TextGenerator().generate("Say hi.", temperature=0, max_new_tokens=5).strip()


def test_models_lists_parameters_after_conversion(folder):
    out = subprocess.run([sys.executable, "-m", "genlab", "models"], capture_output=True, text=True, check=True,
                         env={**os.environ, "COLUMNS": "200"})
    assert "134.52M" in out.stdout and DEFAULT_TEXT_MODEL in out.stdout
