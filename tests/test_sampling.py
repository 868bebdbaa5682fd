"""The sampling filters on hand-worked distributions."""

import math

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
