"""genlab's transformer (nn/transformer.py) and decoding loop against transformers, the reference implementation."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from genlab.text.engine import TransformersModel, load_language_model
from genlab.nn.transformer import Transformer, UnsupportedArchitecture, load_hf, save_hf
from genlab.autoregressive.decode import decode
from genlab.autoregressive.sampling import SamplingParams


def reference(n_heads, n_kv, tie, layers=2, seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=layers,
                      num_attention_heads=n_heads, num_key_value_heads=n_kv, max_position_embeddings=64,
                      tie_word_embeddings=tie, rope_theta=500.0)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("n_heads,n_kv", [(4, 4), (4, 2), (6, 1)])
@pytest.mark.parametrize("tie", [True, False])
def test_logits_match_transformers(n_heads, n_kv, tie):
    ref = reference(n_heads, n_kv, tie)
    ours = Transformer.from_hf(ref.config.to_dict(), ref.state_dict())
    ids = torch.randint(0, 97, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref(ids).logits
    cache = ours.new_cache(32)
    # prefill, a chunk appended to the cache, then single tokens: every attention path
    got = torch.cat([ours(ids[:, :5], cache), ours(ids[:, 5:9], cache)] + [ours(ids[:, i:i + 1], cache) for i in range(9, 12)], 1)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_batch_of_two_matches_transformers():
    ref = reference(4, 2, True)
    ours = Transformer.from_hf(ref.config.to_dict(), ref.state_dict())
    ids = torch.randint(0, 97, (2, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = ref(ids).logits
    torch.testing.assert_close(ours(ids, ours.new_cache(16, batch=2)), expected, atol=1e-5, rtol=1e-5)


def test_context_overflow_is_an_error():
    ref = reference(4, 2, True)
    ours = Transformer.from_hf(ref.config.to_dict(), ref.state_dict())
    cache = ours.new_cache(4)
    with pytest.raises(ValueError, match="context full"):
        ours(torch.zeros(1, 5, dtype=torch.long), cache)


@pytest.mark.parametrize("n_heads,n_kv", [(4, 4), (4, 2)])
def test_bidirectional_mask_matches_transformers_with_is_causal_off(n_heads, n_kv):
    """The masked-diffusion LM's network: every position sees the whole sequence. transformers'
    Llama does that under SDPA with no attention_mask once each layer's is_causal is False."""
    ref = reference(n_heads, n_kv, True)
    ref.set_attn_implementation("sdpa")
    for layer in ref.model.layers:
        layer.self_attn.is_causal = False
    ours = Transformer.from_hf(ref.config.to_dict(), ref.state_dict(), causal=False)
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected, got, causal = ref(ids).logits, ours(ids), reference(n_heads, n_kv, True)(ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (got[:, 0] - causal[:, 0]).abs().max() > 1e-3  # position 0 sees the future: the mask really is lifted
    with pytest.raises(ValueError, match="causal"):
        ours(ids, ours.new_cache(16, batch=2))


def test_a_training_step_lowers_the_loss_and_reaches_every_weight():
    """No inference_mode inside forward: gradients reach every parameter, and Adam steps on one fixed batch lower its loss."""
    from genlab.autoregressive.train_lm import build_model, next_token_loss

    torch.manual_seed(0)
    model = build_model(97, 32, 48, 2, 2)
    x = torch.randint(0, 97, (4, 32), generator=torch.Generator().manual_seed(4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(3):
        loss = next_token_loss(model, x)
        opt.zero_grad()
        loss.backward()
        if not losses:
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[0] > losses[1] > losses[2]


def test_a_trained_model_saves_a_folder_transformers_loads(tmp_path):
    """to_hf splits the fused matrices back under transformers' names: LlamaForCausalLM reads what genlab writes."""
    from genlab.autoregressive.train_lm import build_model, next_token_loss

    torch.manual_seed(0)
    model = build_model(97, 32, 48, 2, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(5)
    for _ in range(3):
        loss = next_token_loss(model, torch.randint(0, 97, (4, 32), generator=g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_hf(model.eval(), tmp_path, eos_token_id=0)
    ref = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    again = load_hf(tmp_path)
    ids = torch.randint(0, 97, (2, 20), generator=g)
    with torch.no_grad():
        ours = model(ids)
        torch.testing.assert_close(ref(ids).logits, ours, atol=1e-5, rtol=1e-5)
        assert torch.equal(again(ids), ours)  # and back again, bit for bit
    assert ref.config.tie_word_embeddings and ref.config.eos_token_id == 0


def test_unsupported_architecture_is_detected():
    cfg = reference(4, 2, True).config.to_dict()
    with pytest.raises(UnsupportedArchitecture):
        Transformer.from_hf({**cfg, "model_type": "gpt2"}, {})
    with pytest.raises(UnsupportedArchitecture):
        Transformer.from_hf({**cfg, "rope_parameters": {"rope_type": "llama3", "rope_theta": 1.0}}, {})


def test_greedy_tokens_identical_to_transformers_generate(tiny_model):
    lm = load_language_model(tiny_model, device="cpu", dtype="float32")
    ref = LlamaForCausalLM.from_pretrained(tiny_model).eval()
    prompt = lm.tokenizer.encode("def attention(query, key, value):")
    want = ref.generate(torch.tensor([prompt]), max_new_tokens=40, do_sample=False, eos_token_id=None,
                        pad_token_id=0)[0, len(prompt):].tolist()
    got = [s.token_id for s in decode(lm, prompt, SamplingParams(max_new_tokens=40, temperature=0), seed=0)]
    assert got == want


@pytest.mark.parametrize("kw", [
    dict(temperature=0.8),
    dict(temperature=1.3, top_k=7),
    dict(temperature=0.9, top_p=0.8),
    dict(temperature=1.0, min_p=0.05),
    dict(temperature=0.7, top_k=20, top_p=0.9, repetition_penalty=1.3),
    dict(temperature=0, repetition_penalty=1.5),
])
def test_sampled_tokens_identical_to_transformers(tiny_model, kw):
    """Same logits (transformers' own model as the engine), same seed: the filters and the draw must agree."""
    ref = LlamaForCausalLM.from_pretrained(tiny_model).eval()
    lm = load_language_model(tiny_model, device="cpu", dtype="float32")
    engine = TransformersModel(ref, lm.tokenizer, set())
    prompt = lm.tokenizer.encode("The with statement")
    torch.manual_seed(1234)
    hf_kw = {"top_k": 0, **{k: v for k, v in kw.items() if k != "temperature"}}  # generate() defaults to top_k=50
    if kw["temperature"] > 0:
        hf_kw.update(temperature=kw["temperature"], do_sample=True)
    else:
        hf_kw.update(do_sample=False)
    want = ref.generate(torch.tensor([prompt]), max_new_tokens=30, eos_token_id=None, pad_token_id=0,
                        **hf_kw)[0, len(prompt):].tolist()
    got = [s.token_id for s in decode(engine, prompt, SamplingParams(max_new_tokens=30, **kw), seed=1234)]
    assert got == want


def test_the_cpu_dtype_is_chosen_once_per_machine(genlab_home):
    """`auto` picks float32 or a half type by timing matmuls; a busy moment must not change that choice
    between runs (the same seed would give other text), so the answer is kept in GENLAB_HOME."""
    import json

    from genlab.text import engine

    engine.fastest_cpu_dtype.cache_clear()
    first = engine.fastest_cpu_dtype()
    saved = json.loads((genlab_home / "cpu_dtype.json").read_text())
    assert engine.DTYPES[saved["dtype"]] == first and "torch" in saved["key"]
    engine.fastest_cpu_dtype.cache_clear()
    (genlab_home / "cpu_dtype.json").write_text(json.dumps(dict(saved, dtype="bfloat16")))
    assert engine.fastest_cpu_dtype() == torch.bfloat16  # read back, not measured again
    (genlab_home / "cpu_dtype.json").write_text(json.dumps(saved))
    engine.fastest_cpu_dtype.cache_clear()
