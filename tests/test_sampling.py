"""The sampling filters on hand-worked distributions."""

import math
import re

import pytest
import torch

from genlab.errors import GenlabError
from genlab.autoregressive.sampling import (SamplingParams, filtered_logits, min_p_filter, next_token, repetition_penalty,
                                  top_k_filter, top_p_filter)


def logits_of(*probs):
    return torch.tensor([math.log(p) for p in probs])


def kept_probs(logits):
    return [round(p, 6) for p in logits.softmax(-1).tolist()]


def test_top_p_keeps_smallest_set_reaching_p():
    # 0.5 + 0.3 = 0.8 >= 0.7: two tokens kept, renormalised to 0.625 / 0.375
    assert kept_probs(top_p_filter(logits_of(0.5, 0.3, 0.2), 0.7)) == [0.625, 0.375, 0.0]
    # exactly reaching p with the first token keeps only it
    assert kept_probs(top_p_filter(logits_of(0.5, 0.3, 0.2), 0.5)) == [1.0, 0.0, 0.0]
    # order in the vocabulary does not matter
    assert kept_probs(top_p_filter(logits_of(0.2, 0.5, 0.3), 0.7)) == [0.0, 0.625, 0.375]
    assert kept_probs(top_p_filter(logits_of(0.5, 0.3, 0.2), 1.0)) == [0.5, 0.3, 0.2]
    # a tiny p still keeps the most likely token
    assert kept_probs(top_p_filter(logits_of(0.5, 0.3, 0.2), 0.01)) == [1.0, 0.0, 0.0]


def test_top_k():
    assert kept_probs(top_k_filter(logits_of(0.1, 0.4, 0.2, 0.3), 2)) == [0.0, round(0.4 / 0.7, 6), 0.0, round(0.3 / 0.7, 6)]
    assert kept_probs(top_k_filter(logits_of(0.1, 0.4, 0.2, 0.3), 0)) == [0.1, 0.4, 0.2, 0.3]


def test_min_p_is_relative_to_the_top_token():
    # threshold 0.5 * 0.5 = 0.25: 0.3 stays, 0.2 goes
    assert kept_probs(min_p_filter(logits_of(0.5, 0.3, 0.2), 0.5)) == [0.625, 0.375, 0.0]


def test_repetition_penalty_divides_positive_and_multiplies_negative():
    out = repetition_penalty(torch.tensor([2.0, -2.0, 1.0]), torch.tensor([0, 1]), 2.0)
    assert out.tolist() == [1.0, -4.0, 1.0]


def test_temperature_sharpens_and_flattens():
    base = logits_of(0.6, 0.3, 0.1)
    cold = filtered_logits(base, torch.tensor([], dtype=torch.long), SamplingParams(temperature=0.5)).softmax(-1)
    hot = filtered_logits(base, torch.tensor([], dtype=torch.long), SamplingParams(temperature=2.0)).softmax(-1)
    assert cold[0] > 0.6 > hot[0]
    # T = 0.5 squares the probabilities before renormalising
    torch.testing.assert_close(cold, torch.tensor([0.36, 0.09, 0.01]) / 0.46)


def test_draws_follow_the_filtered_distribution():
    params = SamplingParams(temperature=1.0, top_p=0.7)
    rng = torch.Generator().manual_seed(0)
    seen = torch.tensor([], dtype=torch.long)
    draws = [next_token(logits_of(0.5, 0.3, 0.2), seen, params, rng) for _ in range(4000)]
    assert 2 not in draws
    assert abs(draws.count(0) / 4000 - 0.625) < 0.03


def test_greedy_is_argmax():
    assert next_token(logits_of(0.2, 0.5, 0.3), torch.tensor([], dtype=torch.long), SamplingParams(temperature=0), None) == 1


@pytest.mark.parametrize("kw,fragment", [
    (dict(temperature=-0.1), "temperature must be a finite number between 0 and 100, got -0.1"),
    (dict(top_p=0.0), "top_p must be a finite number above 0 and at most 1, got 0.0"),
    (dict(top_p=1.5), "top_p must be a finite number above 0 and at most 1, got 1.5"),
    (dict(top_k=-1), "top_k must be an integer of at least 0, got -1"),
    (dict(max_new_tokens=0), "max_new_tokens must be an integer of at least 1, got 0"),
    (dict(min_p=2.0), "min_p must be a finite number between 0 and 1, got 2.0"),
    (dict(repetition_penalty=0.0), "repetition_penalty must be a finite number above 0 and at most 100, got 0.0"),
    (dict(stop=[""]), "stop strings must be non-empty"),
    (dict(seed=-1), "seed must be an integer"),
])
def test_bad_parameters_say_what_is_accepted(kw, fragment):
    with pytest.raises(GenlabError) as e:
        SamplingParams(**kw)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_logit_bias_adds_to_the_logits_before_sampling():
    logits = logits_of(0.5, 0.3, 0.2)
    assert next_token(logits, torch.empty(0, dtype=torch.long), SamplingParams(temperature=0), torch.Generator()) == 0
    banned = SamplingParams(temperature=0, logit_bias={0: -100})
    assert next_token(logits, torch.empty(0, dtype=torch.long), banned, torch.Generator()) == 1
    forced = SamplingParams(temperature=1.0, logit_bias={2: 100})
    assert {next_token(logits, torch.empty(0, dtype=torch.long), forced, torch.Generator().manual_seed(s)) for s in range(20)} == {2}
    nudged = filtered_logits(logits, torch.empty(0, dtype=torch.long), SamplingParams(temperature=1.0, logit_bias={1: math.log(2)}))
    assert kept_probs(nudged) == kept_probs(logits_of(0.5, 0.6, 0.2))  # +log 2 doubles a token's odds
    rows = filtered_logits(torch.stack([logits, logits]), torch.empty(0, dtype=torch.long), banned)  # (k, V): speculative's
    assert torch.allclose(rows[:, 0], torch.tensor([math.log(0.5) - 100] * 2))
    assert torch.equal(rows[:, 1:], torch.stack([logits, logits])[:, 1:])  # only the listed token moves


@pytest.mark.parametrize("bias,message", [
    ({5: 101}, "logit_bias values must be numbers between -100 and 100, got 101 for token 5"),
    ({-1: 1}, "logit_bias keys must be token ids (integers of at least 0), got -1"),
    ({"5": 1}, "logit_bias keys must be token ids (integers of at least 0), got '5'"),
])
def test_bad_logit_bias_is_one_line(bias, message):
    with pytest.raises(GenlabError, match=re.escape(message)):
        SamplingParams(logit_bias=bias)


def test_cli_logit_bias_forces_bans_and_refuses(capsys):
    from genlab.text.generator import TextGenerator
    from test_cli import assert_one_line_error, run

    [loop] = TextGenerator("pydoc-gpt").tokenizer.encode(" loop")
    base = ["text", "The for statement", "--model", "pydoc-gpt", "--raw", "--temperature", "0", "-n", "4"]
    code, out, err = run(base + ["--logit-bias", f"{loop}=100"], capsys)
    assert code == 0 and out.strip() == "loop loop loop loop", err
    code, plain, _ = run(base, capsys)
    first = plain.split()[0]
    code, out, _ = run(base + ["--logit-bias", f"{loop}=-100"], capsys)
    assert code == 0 and "loop" not in out and out.split()[0] == first  # banning an unlikely token changes nothing here
    for args, message in ((["--logit-bias", "99999=1"], "--logit-bias names token 99999, outside this model's vocabulary (token ids 0 to 4095)"),
                          (["--logit-bias", "1=-150"], "--logit-bias values must be numbers between -100 and 100, got -150.0"),
                          (["--logit-bias", "x=1"], "--logit-bias takes TOKEN_ID=BIAS, e.g. 1234=-100, got 'x=1'")):
        code, _, err = run(base + args, capsys)
        assert_one_line_error(code, err, message)
