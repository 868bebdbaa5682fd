"""genlab's tokenizer wrapper against transformers' AutoTokenizer."""

import pytest
from transformers import AutoTokenizer

from genlab.errors import GenlabError
from genlab.text.tokenizer import Tokenizer

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is a KV cache? ünïcode 🙂"},
    {"role": "assistant", "content": "Saved keys and values."},
    {"role": "user", "content": "Why?"},
]


def assert_same_as_transformers(folder):
    ours, ref = Tokenizer.from_folder(folder), AutoTokenizer.from_pretrained(folder)
    for gen_prompt in (True, False):
        text = ours.chat_prompt(CONVERSATION, add_generation_prompt=gen_prompt)
        assert text == ref.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=gen_prompt)
        assert ours.encode(text) == ref(text, add_special_tokens=False)["input_ids"]
    sample = "def f(x):\n    return x ** 2  # squared"
    assert ours.encode(sample, add_special_tokens=True) == ref(sample)["input_ids"]
    assert ours.decode(ours.encode(sample)) == ref.decode(ref(sample)["input_ids"], skip_special_tokens=True)


def test_matches_transformers_on_tiny_tokenizer(tiny_model):
    assert_same_as_transformers(tiny_model)


@pytest.mark.parametrize("messages", [[], "hi", [{"role": "robot", "content": "x"}], [{"role": "user", "content": 3}]])
def test_malformed_messages_are_rejected(tiny_model, messages):
    with pytest.raises(GenlabError, match="messages"):
        Tokenizer.from_folder(tiny_model).chat_prompt(messages)
