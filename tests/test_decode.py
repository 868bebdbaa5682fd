"""Turning token steps into text: UTF-8 boundaries, stop strings, finish reasons."""

from genlab.autoregressive.decode import TokenStep, detokenize
from genlab.text.tokenizer import Tokenizer


def steps_for(tok, text, finish="length"):
    ids = tok.encode(text)
    return [TokenStep(t, 0.0, [], finish if i == len(ids) - 1 else None) for i, t in enumerate(ids)]


def test_split_characters_are_never_emitted_half(tiny_model):
    tok = Tokenizer.from_folder(tiny_model)
    text = "naïve café 🙂 — done"
    ids = tok.encode(text)
    assert len(ids) > len(text.split())  # the emoji is several byte-level tokens
    pieces = list(detokenize(tok, steps_for(tok, text)))
    assert all("\ufffd" not in p.text for p in pieces)
    assert "".join(p.text for p in pieces) == text
    assert pieces[-1].finish_reason == "length"
    assert sum(len(p.tokens) for p in pieces) == len(ids)


def test_stop_string_cuts_and_is_not_emitted(tiny_model):
    tok = Tokenizer.from_folder(tiny_model)
    pieces = list(detokenize(tok, steps_for(tok, "first line\nEND of it\nmore"), stop=["END"]))
    assert "".join(p.text for p in pieces) == "first line\n"
    assert pieces[-1].finish_reason == "stop"
    # the generation is cut right after the token that completed the stop string
    assert sum(len(p.tokens) for p in pieces) < len(tok.encode("first line\nEND of it\nmore"))


def test_possible_stop_prefix_is_held_back_then_released(tiny_model):
    tok = Tokenizer.from_folder(tiny_model)
    pieces = list(detokenize(tok, steps_for(tok, "a ST b"), stop=["STOP"]))
    assert "".join(p.text for p in pieces) == "a ST b"
    assert pieces[-1].finish_reason == "length"


def test_end_of_turn_token_is_not_text(tiny_model):
    tok = Tokenizer.from_folder(tiny_model)
    eot = tok.special_ids(["<|im_end|>"]).pop()
    steps = steps_for(tok, "Hello there", finish=None) + [TokenStep(eot, 0.0, [], "stop")]
    pieces = list(detokenize(tok, steps))
    assert "".join(p.text for p in pieces) == "Hello there"
    assert pieces[-1].finish_reason == "stop"
