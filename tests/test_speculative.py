"""Speculative decoding (autoregressive/speculative.py): exact in distribution, identical when greedy.

The statistical tests compare sampled tokens with the model's exact distribution, computed by
enumerating every continuation of a tiny model; a deliberately wrong rule (keep every guess)
must fail the same test, so the test is able to fail.
"""

import itertools

import pytest
import torch
from scipy.stats import chisquare

from genlab.autoregressive import speculative
from genlab.autoregressive.decode import DecodeStats, decode
from genlab.autoregressive.sampling import SamplingParams, filtered_logits
from genlab.nn.transformer import Transformer, TransformerConfig
from genlab.text.engine import TorchLlama

VOCAB, PROMPT, STEPS = 4, [0, 3, 1], 4


@pytest.fixture(scope="module")
def tiny():
    """A 2-layer Llama over 4 tokens with weights large enough for peaked, varied distributions."""
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=64, max_seq_len=32)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(12.0)
    return TorchLlama(model, tokenizer=None, stop_token_ids=set())


class Fixed:
    """A draft that always guesses the same tokens: the rule must be exact for any draft."""

    def __init__(self, guesses):
        self.guesses = guesses

    def propose(self, history, room):
        return self.guesses[:room]

    def update(self, proposed, accepted):
        pass


def exact_distribution(lm, params) -> dict[tuple, float]:
    """P(t1..t4 | prompt) under the filtered distributions, by enumeration."""
    probs = {}
    for seq in itertools.product(range(VOCAB), repeat=STEPS):
        p, ids = 1.0, list(PROMPT)
        for t in seq:
            cache = lm.new_cache(16)
            logits = lm.forward(ids, cache)
            p *= float(filtered_logits(logits, torch.tensor(ids), params).softmax(-1)[t])
            ids.append(t)
        probs[seq] = p
    return probs


def sample_counts(lm, params, draws: int, guesses) -> tuple[dict[tuple, int], DecodeStats]:
    counts = dict.fromkeys(itertools.product(range(VOCAB), repeat=STEPS), 0)
    stats = DecodeStats()
    for seed in range(draws):
        steps = speculative.decode(lm, PROMPT, params, seed, Fixed(guesses), stats)
        counts[tuple(s.token_id for s in steps)] += 1
    return counts, stats


def p_value(counts, probs, draws) -> float:
    """Chi-square goodness of fit, cells with fewer than 5 expected draws pooled."""
    observed, expected, rest_o, rest_e = [], [], 0, 0.0
    for k, p in probs.items():
        if p * draws >= 5:
            observed.append(counts[k])
            expected.append(p * draws)
        else:
            rest_o, rest_e = rest_o + counts[k], rest_e + p * draws
    observed.append(rest_o)
    expected.append(rest_e)
    total = sum(expected)
    return float(chisquare(observed, [e * draws / total for e in expected]).pvalue)


@pytest.mark.parametrize("params", [
    SamplingParams(max_new_tokens=STEPS, temperature=1.0, ignore_eos=True),
    SamplingParams(max_new_tokens=STEPS, temperature=0.7, top_k=3, repetition_penalty=1.3, ignore_eos=True),
], ids=["plain", "filtered"])
def test_sampled_tokens_follow_the_models_distribution(tiny, params, monkeypatch):
    draws = 3000
    probs = exact_distribution(tiny, params)
    likely = list(max(probs, key=probs.get))[1:]  # guesses the model often keeps, and sometimes not
    counts, stats = sample_counts(tiny, params, draws, likely)
    assert stats.draft_tokens > draws and 0.2 < stats.accepted_tokens / stats.draft_tokens < 0.8  # both paths taken
    assert p_value(counts, probs, draws) > 1e-3
    # the same test catches a wrong rule: keeping every guess skews the distribution towards them
    monkeypatch.setattr(speculative, "accept", lambda p, q, guess, rng, greedy: None)
    assert p_value(sample_counts(tiny, params, draws, likely)[0], probs, draws) < 1e-6


def test_accept_rule_with_a_draft_distribution():
    """With a draft that samples its guess from q, keep-or-resample gives tokens distributed as p."""
    p = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    q = torch.tensor([0.1, 0.2, 0.3, 0.2, 0.2])
    rng = torch.Generator().manual_seed(0)
    draws = 20000
    counts = torch.zeros(5)
    for _ in range(draws):
        guess = int(torch.multinomial(q, 1, generator=rng))
        kept = speculative.accept(p, q, guess, rng, greedy=False)
        counts[guess if kept is None else kept] += 1
    assert counts[4] == 0  # a token the model rules out never appears
    assert chisquare(counts[:4].numpy(), (p[:4] / p[:4].sum() * draws).numpy()).pvalue > 1e-3


def test_greedy_is_identical_to_plain_decoding_on_the_tiny_model(tiny):
    params = SamplingParams(max_new_tokens=12, temperature=0, ignore_eos=True, speculative="off")
    plain = [s.token_id for s in decode(tiny, PROMPT, params, 0)]
    for guesses in ([plain[1]], [2, 1], plain[1:6], [0] * 8):
        spec = [s.token_id for s in speculative.decode(tiny, PROMPT, params, 0, Fixed(guesses))]
        assert spec == plain, guesses


def test_prompt_lookup_guesses_what_followed_the_ending_before():
    look = speculative.PromptLookup(max_ngram=3, min_ngram=2)
    assert look.propose([5, 6, 7, 8, 9, 1, 5, 6, 7], 3) == [8, 9, 1]  # the 3-gram 5 6 7
    assert look.propose([1, 2, 3, 9, 2, 3, 4, 0, 2, 3], 2) == [4, 0]  # the latest occurrence of 2 3 wins
    assert look.propose([1, 2, 3, 4], 5) == []  # no earlier 2-gram
    assert look.propose([1, 2, 1, 2], 0) == []


def test_adaptive_draft_pauses_when_guesses_fail():
    class Always:
        def propose(self, history, k):
            return [7] * k

    draft = speculative.Adaptive(Always(), k_start=2, k_max=16, window=3, min_rate=0.3, pause=4)
    assert len(draft.propose([], 100)) == 2
    draft.update(2, 2)
    assert len(draft.propose([], 100)) == 4  # kept whole: twice as many
    draft.update(4, 1)
    assert len(draft.propose([], 100)) == 1  # missed: as many as were kept
    draft.update(1, 0)
    draft.update(1, 0)  # 1 kept of 7 in the last three guesses: under 30%
    assert [len(draft.propose([], 100)) for _ in range(5)] == [0, 0, 0, 0, 2]
