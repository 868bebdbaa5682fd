"""Classifier-free guidance for text (autoregressive/guidance.py) against transformers' generate(guidance_scale=...)."""

import pytest
import torch
from transformers import LlamaForCausalLM

from genlab.autoregressive import speculative
from genlab.autoregressive.decode import decode
from genlab.autoregressive.guidance import Guidance
from genlab.autoregressive.sampling import SamplingParams
from genlab.errors import GenlabError
from genlab.text.engine import TransformersModel, load_language_model


def _hf_kwargs(temperature: float, **extra) -> dict:
    kw = {"top_k": 0, **extra}  # generate() defaults to top_k=50
    return dict(kw, temperature=temperature, do_sample=True) if temperature > 0 else dict(kw, do_sample=False)


@pytest.mark.parametrize("scale,temperature,negative,extra", [
    (1.5, 0, None, {}),
    (3.0, 0, "Write about something else entirely.", {}),
    (1.5, 0.9, None, {}),
    (2.0, 0.8, "the", {"top_p": 0.9}),
    (0.5, 1.0, "Python", {"repetition_penalty": 1.3}),
])
def test_tokens_identical_to_transformers_generate(tiny_model, scale, temperature, negative, extra):
    """Same model (transformers' own as the engine), same seed, same guidance: the same tokens."""
    ref = LlamaForCausalLM.from_pretrained(tiny_model).eval()
    tok = load_language_model(tiny_model, device="cpu", dtype="float32").tokenizer
    engine = TransformersModel(ref, tok, set())
    prompt = tok.encode("The with statement")
    uncond = prompt[-1:] if negative is None else tok.encode(negative)
    torch.manual_seed(77)
    hf = {"negative_prompt_ids": torch.tensor([uncond])} if negative is not None else {}
    want = ref.generate(torch.tensor([prompt]), max_new_tokens=25, eos_token_id=None, pad_token_id=0,
                        guidance_scale=scale, **hf, **_hf_kwargs(temperature, **extra))[0, len(prompt):].tolist()
    params = SamplingParams(max_new_tokens=25, temperature=temperature, guidance_scale=scale, **extra)
    got = [s.token_id for s in decode(engine, prompt, params, seed=77, guidance=Guidance(engine, uncond, scale, 25))]
    assert got == want


@pytest.mark.slow
def test_bundled_model_matches_transformers_and_guidance_changes_its_text():
    """The same on SmolLM2 itself, a trained model whose answer guidance visibly moves."""
    from transformers import AutoModelForCausalLM

    from genlab.text.sources import DEFAULT_TEXT_MODEL, resolve

    folder = resolve(DEFAULT_TEXT_MODEL)
    ref = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = load_language_model(folder, device="cpu", dtype="float32").tokenizer
    engine = TransformersModel(ref, tok, set())
    prompt = tok.encode(tok.chat_prompt([{"role": "user", "content": "Describe the sea in one sentence."}]))
    negative = tok.encode(tok.chat_prompt([{"role": "user", "content": "Describe anything in one sentence."}]))
    torch.manual_seed(5)
    want = ref.generate(torch.tensor([prompt]), max_new_tokens=20, eos_token_id=None, pad_token_id=0, guidance_scale=2.0,
                        negative_prompt_ids=torch.tensor([negative]), **_hf_kwargs(0.7))[0, len(prompt):].tolist()
    params = SamplingParams(max_new_tokens=20, temperature=0.7, guidance_scale=2.0)
    got = [s.token_id for s in decode(engine, prompt, params, seed=5, guidance=Guidance(engine, negative, 2.0, 20))]
    assert got == want
    plain = [s.token_id for s in decode(engine, prompt, SamplingParams(max_new_tokens=20, temperature=0.7), seed=5)]
    assert got != plain  # guidance changed the text: the comparison above is not of two unguided runs


def test_speculative_decoding_keeps_the_guided_text(tiny_model):
    """Prompt lookup scores its guesses in both branches: greedy guided text is token for token the plain loop's."""
    lm = load_language_model(tiny_model, device="cpu", dtype="float32")
    prompt = lm.tokenizer.encode("for x in range(3): print(x)\nfor x in range(3): print(x)\nfor x in")
    params = SamplingParams(max_new_tokens=40, temperature=0, guidance_scale=1.8, ignore_eos=True)
    plain = [s.token_id for s in decode(lm, prompt, params, 0, guidance=Guidance(lm, prompt[-1:], 1.8, 40))]
    stats = speculative.DecodeStats()
    fast = [s.token_id for s in speculative.decode(lm, prompt, params, 0, speculative.Adaptive(speculative.PromptLookup()),
                                                   stats, guidance=Guidance(lm, prompt[-1:], 1.8, 40))]
    assert fast == plain and stats.draft_tokens > 0


def test_generator_takes_guidance_and_a_negative_prompt():
    """The bundled model on its default (4-bit) engine: guidance and a negative prompt each change the reply, reproducibly."""
    from genlab.text.generator import TextGenerator

    gen = TextGenerator()
    ask = "Name a colour and say why you like it."
    base = dict(max_new_tokens=24, temperature=0, seed=1)
    plain = gen.generate(ask, **base)
    assert gen.generate(ask, guidance_scale=1, **base) == plain
    guided = gen.generate(ask, guidance_scale=3, **base)
    negative = gen.generate(ask, guidance_scale=3, negative_prompt="Name a colour: blue.", **base)
    assert len({plain, guided, negative}) == 3
    assert gen.generate(ask, guidance_scale=3, negative_prompt="Name a colour: blue.", **base) == negative


@pytest.mark.parametrize("kw,message", [
    (dict(guidance_scale=-1), "guidance_scale must be a finite number between 0 and 100, got -1"),
    (dict(guidance_scale=float("inf")), "guidance_scale must be a finite number"),
    (dict(negative_prompt="x"), "negative_prompt works through guidance: give a guidance_scale other than 1"),
    (dict(negative_prompt=" ", guidance_scale=2), "negative_prompt must be non-empty text"),
])
def test_bad_guidance_is_one_line(kw, message):
    with pytest.raises(GenlabError, match=message):
        SamplingParams(**kw)


def test_cli_guidance_flags(tiny_model, capsys):
    from genlab.cli import main

    with pytest.raises(SystemExit) as e:
        main(["text", "hello", "--model", str(tiny_model), "--guidance-scale", "-0.5", "--engine", "torch"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--guidance-scale must be a finite number between 0 and 100, got -0.5" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as e:
        main(["text", "The with statement", "--model", str(tiny_model), "--engine", "torch", "--temperature", "0", "-n", "12",
              "--guidance-scale", "2.5", "--negative-prompt", "loops"])
    assert e.value.code == 0
    from genlab.text.generator import TextGenerator

    want = TextGenerator(str(tiny_model), engine="torch").generate(
        "The with statement", max_new_tokens=12, temperature=0, guidance_scale=2.5, negative_prompt="loops")
    assert capsys.readouterr().out.strip() == want.strip()
