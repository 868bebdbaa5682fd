"""Text <-> token ids, and chat messages -> one prompt string.

Why not transformers.AutoTokenizer? Importing transformers costs about 1.3 s on every
start, more than loading the whole model from the cache. The fast tokenizer
(`tokenizers`) and the chat template (a Jinja2 program shipped with the model) are all
generation needs. tests/test_tokenizer.py checks both against transformers.

    tok = Tokenizer.from_folder(path)
    ids = tok.encode(tok.chat_prompt([{"role": "user", "content": "Hi"}]))
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from genlab.errors import GenlabError, check_text

_ROLES = ("system", "user", "assistant")


def _token_text(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


class Tokenizer:
    def __init__(self, tokenizer, config: dict, chat_template: str | None):
        self._tok = tokenizer
        self.chat_template = chat_template
        self.bos_token = _token_text(config.get("bos_token"))
        self.eos_token = _token_text(config.get("eos_token"))
        self.eos_token_id = self._tok.token_to_id(self.eos_token) if self.eos_token else None
        self.vocab_size = self._tok.get_vocab_size()
        self._template = None

    @classmethod
    def from_folder(cls, folder: str | Path) -> "Tokenizer":
        from tokenizers import Tokenizer as FastTokenizer

        folder = Path(folder)
        config = json.loads((folder / "tokenizer_config.json").read_text()) if (folder / "tokenizer_config.json").exists() else {}
        template = config.get("chat_template")
        if (folder / "chat_template.jinja").exists():  # where transformers >= 4.43 saves it
            template = (folder / "chat_template.jinja").read_text()
        return cls(FastTokenizer.from_file(str(folder / "tokenizer.json")), config, template)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        check_text("the prompt", text)  # the fast tokenizer raises a bare TypeError on lone surrogates
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def vocab(self) -> dict[str, int]:
        """Every token's text and id."""
        return self._tok.get_vocab()

    def to_json(self) -> str:
        """The whole tokenizer as tokenizer.json text (what grammar engines index: structured.py)."""
        return self._tok.to_str()

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    def token_text(self, token_id: int) -> str:
        """One token as text, for the per-token probability view (may be a partial character)."""
        return self._tok.decode([token_id], skip_special_tokens=False)

    def special_ids(self, names: list[str]) -> set[int]:
        return {i for i in (self._tok.token_to_id(n) for n in names) if i is not None}

    def chat_prompt(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """Render messages with the model's chat template, exactly as transformers does."""
        check_messages(messages)
        if not self.chat_template:
            raise GenlabError("this model has no chat template; use plain text generation instead of chat")
        if self._template is None:
            self._template = _compile(self.chat_template)
        return self._template.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
        )


def check_messages(messages) -> None:
    if not isinstance(messages, list) or not messages:
        raise GenlabError("messages must be a non-empty list of {'role': ..., 'content': ...}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in _ROLES or not isinstance(m.get("content"), str):
            raise GenlabError(f"messages[{i}] must be {{'role': one of {', '.join(_ROLES)}, 'content': a string}}")
        check_text(f"messages[{i}]['content']", m["content"])


def _compile(source: str):
    # the environment transformers renders chat templates in: sandboxed, trimmed blocks
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise GenlabError(f"chat template: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False: json.dumps(x, indent=indent, ensure_ascii=ensure_ascii)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)
