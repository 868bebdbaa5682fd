"""LoRA fine-tuning of a language model: `genlab finetune text`.

    genlab finetune text --data facts.jsonl --steps 300 --out runs/lora
    genlab text "..." --adapter runs/lora/adapter

The data is plain text (the loss falls on every token: the model learns to continue text
like it) or JSONL chat, one {"messages": [...]} per line, where the loss falls only on the
assistant turns, rendered through the model's own chat template: the model learns to answer,
not to predict the questions. The frozen base is a transformers model wrapped by PEFT; the
run uses the same Trainer as every other genlab model, so it gets the same progress bar,
atomic checkpoints (holding only the adapter) and bit-for-bit --resume.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from genlab.errors import GenlabError, check
from genlab.store import atomic_dir
from genlab.training.loop import StepStats, TrainConfig
from genlab.training.options import TextLoraOptions
from genlab.training.run import Run

IGNORE = -100  # label of a token the loss skips (transformers' convention)


@dataclass
class Example:
    ids: list[int]
    labels: list[int]  # ids where the loss applies, IGNORE elsewhere
    asked: str = ""  # for chat data, the last user message before the first reply (shown in samples)


def read_examples(path: Path, tokenizer, max_length: int) -> list[Example]:
    """JSONL chat (by the .jsonl suffix) or plain text, as token ids with their loss mask."""
    check(path.is_file(), f"--data {str(path)!r} is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise GenlabError(f"--data {str(path)!r} cannot be read as UTF-8 text: {e}") from None
    check(text.strip() != "", f"--data {str(path)!r} is empty; give plain text, or JSONL with one "
                              '{"messages": [...]} per line')
    examples = chat_examples(path, text, tokenizer, max_length) if path.suffix.lower() == ".jsonl" \
        else text_examples(text, tokenizer, max_length)
    check(examples, f"--data {str(path)!r} gave no training examples")
    return examples


def text_examples(text: str, tokenizer, max_length: int) -> list[Example]:
    """Causal LM on plain text: the tokens cut into windows of max_length."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    windows = [ids[i:i + max_length] for i in range(0, len(ids), max_length)]
    return [Example(w, list(w)) for w in windows if len(w) >= 2]


def chat_examples(path: Path, text: str, tokenizer, max_length: int) -> list[Example]:
    """One example per conversation; the loss covers each assistant reply and its end-of-turn token."""
    from genlab.text.tokenizer import check_messages

    examples = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"--data {path.name} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise GenlabError(f"{where}: not valid JSON ({e.msg}); each line must be "
                              '{"messages": [{"role": ..., "content": ...}, ...]}') from None
        check(isinstance(record, dict) and isinstance(record.get("messages"), list),
              f'{where}: expected an object with a "messages" list')
        messages = record["messages"]
        try:
            check_messages(messages)
        except GenlabError as e:
            raise GenlabError(f"{where}: {e}") from None
        check(any(m["role"] == "assistant" for m in messages), f"{where}: no assistant message, so nothing to learn")
        examples.append(_mask_to_replies(messages, tokenizer, max_length, where))
    return examples


def _mask_to_replies(messages: list[dict], tokenizer, max_length: int, where: str) -> Example:
    ids: list[int] = []
    labels: list[int] = []
    for i, m in enumerate(messages):
        upto = tokenizer.encode(tokenizer.chat_prompt(messages[: i + 1], add_generation_prompt=False))
        check(upto[: len(ids)] == ids, f"{where}: the chat template does not render turn by turn; use plain text data")
        if m["role"] == "assistant":  # learn the reply, not the "<|im_start|>assistant\n" header before it
            header = tokenizer.encode(tokenizer.chat_prompt(messages[:i], add_generation_prompt=True)) if i else []
            start = len(header) if i and header[: len(ids)] == ids and len(header) <= len(upto) else len(ids)
            labels += [IGNORE] * (start - len(ids)) + upto[start:]
        else:
            labels += [IGNORE] * (len(upto) - len(ids))
        ids = upto
    check(len(ids) <= max_length, f"{where}: the conversation has {len(ids)} tokens, more than --max-length {max_length}")
    first_reply = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
    asked = next((m["content"] for m in reversed(messages[:first_reply]) if m["role"] == "user"), "")
    return Example(ids, labels, asked)


def batch_of(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids, attention_mask and labels (B, T)."""
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id)
    labels = torch.full((len(examples), width), IGNORE)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        ids[row, : len(e.ids)] = torch.tensor(e.ids)
        labels[row, : len(e.labels)] = torch.tensor(e.labels)
        mask[row, : len(e.ids)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@torch.no_grad()
def mean_loss(model, examples: list[Example], pad_id: int, batch_size: int = 8) -> float:
    """Average cross-entropy per supervised token over `examples` (held-out loss)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        batch = batch_of(examples[i:i + batch_size], pad_id)
        n = int((batch["labels"][:, 1:] != IGNORE).sum())
        total += float(model(**batch).loss) * n
        count += n
    model.train(was_training)
    return total / max(count, 1)


def base_model(spec: str):
    """The frozen base as a transformers model (fp32, CPU) and its folder, from any --model genlab accepts."""
    from transformers import AutoModelForCausalLM

    from genlab.text.sources import resolve
    from genlab.text.tokenizer import Tokenizer

    from transformers.utils import logging as hf_logging

    folder = resolve(spec)
    hf_logging.disable_progress_bar()  # genlab shows its own
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return model, Tokenizer.from_folder(folder), folder


class TextLoraRun(Run):
    """out/checkpoints/step-N (the adapter and optimizer state) and out/adapter (a PEFT folder)."""

    kind, Options = "lora-text", TextLoraOptions

    def build(self) -> torch.nn.Module:
        from peft import get_peft_model

        from genlab.lora.adapter import lora_config

        o = self.options
        model, self.tokenizer, _ = base_model(o.model)
        config = lora_config(model, o.rank, o.alpha, o.dropout, o.targets, task_type="CAUSAL_LM")
        self.examples = read_examples(Path(o.data), self.tokenizer, o.max_length)
        self.held_out = read_examples(Path(o.eval), self.tokenizer, o.max_length) if o.eval else []
        torch.manual_seed(o.seed)  # LoRA's A matrices start random (B at zero)
        with warnings.catch_warnings():  # PEFT asks transformers about gradient checkpointing in a deprecated way
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            self.model = get_peft_model(model, config)
        self.model.base_model.model.config.name_or_path = o.model
        self.model.peft_config["default"].base_model_name_or_path = o.model
        return self.model

    def train_config(self) -> TrainConfig:
        o = self.options
        steps = o.steps or max(1, math.ceil(o.epochs * len(self.examples) / o.batch_size))  # --epochs, unless --steps
        return TrainConfig(steps=steps, batch_size=o.batch_size, lr=o.lr, warmup=max(1, steps // 10), ema_decay=0.0,
                           seed=o.seed)

    @property
    def pad_id(self) -> int:
        return self.tokenizer.eos_token_id or 0

    def steps(self) -> Iterator[StepStats]:
        batch = self.trainer.batch

        def loss(model, g: torch.Generator) -> torch.Tensor:
            rows = torch.randint(len(self.examples), (batch,), generator=g).tolist()
            return model(**batch_of([self.examples[r] for r in rows], self.pad_id)).loss

        yield from self.trainer.run(loss)

    def save_model(self) -> None:
        with atomic_dir(self.out / "adapter") as tmp:
            self.model.save_pretrained(str(tmp), save_embedding_layers=False)  # the base's embeddings are unchanged
            (tmp / "README.md").write_text(
                f"LoRA adapter for {self.options.model}, written by `genlab finetune text` at step "
                f"{self.trainer.step}.\nUse: genlab text \"...\" --model {self.options.model} --adapter {self.out / 'adapter'}\n")

    def held_out_loss(self) -> float | None:
        return mean_loss(self.model, self.held_out, self.pad_id) if self.held_out else None

    def sample_grid(self, path: Path) -> None:
        """Greedy answers to the first few held-out (or training) prompts, written next to the checkpoints."""
        source = self.held_out or self.examples
        lines = []
        for e in source[:3]:
            start = next((i for i, label in enumerate(e.labels) if label != IGNORE), len(e.ids))
            prompt = e.ids[:start]
            shown = e.asked or self.tokenizer.decode(prompt)[-200:]
            lines.append(f"{shown}\n-> {greedy_reply(self.model, prompt, self.tokenizer)}\n")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".txt").write_text("\n".join(lines))


@torch.no_grad()
def greedy_reply(model, prompt: list[int], tokenizer, max_new_tokens: int = 40) -> str:
    was_training = model.training
    model.eval()
    out = model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    model.train(was_training)
    return tokenizer.decode(out[0, len(prompt):].tolist())
