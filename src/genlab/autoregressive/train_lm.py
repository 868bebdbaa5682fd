"""A small GPT trained from scratch: `genlab train lm`.

    genlab train lm --data pydoc --out runs/lm        # Python's own documentation, offline
    genlab text "The for statement" --model runs/lm/model --raw

The text is split once (the last tenth held out), a byte-level BPE tokenizer is trained on
the training part with the `tokenizers` library, and genlab's transformer (nn/transformer.py:
RMSNorm, RoPE, SwiGLU, the model its text engine decodes with) learns next-token prediction on
random windows of it. The model folder is an ordinary Hugging Face folder, so `genlab text`,
the server and transformers all read it. Held-out perplexity, exp(mean cross-entropy per
token), is reported at every checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from pathlib import Path

import torch

from genlab.errors import GenlabError, check
from genlab.nn.transformer import Transformer, TransformerConfig, save_hf
from genlab.store import atomic_dir
from genlab.training.loop import StepStats, TrainConfig
from genlab.training.options import LmOptions
from genlab.training.run import Run

EOS = "<|endoftext|>"
HELD_OUT = 0.1  # the last tenth of the text


def read_corpus(source: str) -> str:
    """'pydoc' (Python's own documentation topics, shipped with Python) or a UTF-8 text file."""
    if source == "pydoc":
        from pydoc_data.topics import topics

        return "\n\n".join(topics[k] for k in sorted(topics))
    path = Path(source).expanduser()
    check(path.is_file(), f"--data must be 'pydoc' or a text file; {source!r} is neither")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise GenlabError(f"--data {source!r} cannot be read as UTF-8 text: {e}") from None
    check(len(text.strip()) >= 1000, f"--data {source!r} has {len(text.strip())} characters; give at least 1000")
    return text


def split(text: str) -> tuple[str, str]:
    cut = int(len(text) * (1 - HELD_OUT))
    return text[:cut], text[cut:]


def train_tokenizer(text: str, vocab_size: int):
    """Byte-level BPE (as GPT-2's): any text encodes, and merges are learned from this corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(text.split("\n\n"), trainer)
    return tok


def build_model(vocab_size: int, context: int, width: int, layers: int, heads: int, causal: bool = True) -> Transformer:
    """A freshly initialised transformer, its output layer tied to its embedding (draws from torch's global RNG)."""
    check(layers >= 1 and heads >= 1, f"--layers and --heads must be at least 1, got {layers} and {heads}")
    check(width % heads == 0, f"--width {width} must be a multiple of --heads {heads}")
    return Transformer(TransformerConfig(vocab_size=vocab_size, dim=width, n_layers=layers, n_heads=heads,
                                         max_seq_len=context, tie_embeddings=True, causal=causal))


def next_token_loss(model: Transformer, x: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of each token given those before it: position t predicts token t+1. x: (B, T)."""
    logits = model(x)[:, :-1]  # (B, T-1, V): the last position has nothing to predict
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())


def lm_train_config(o: LmOptions) -> TrainConfig:
    """The loop's settings for lm and diffusion-lm: a short warm-up, weight decay, no EMA."""
    return TrainConfig(steps=o.steps, batch_size=o.batch_size, lr=o.lr, warmup=max(1, o.steps // 20),
                       weight_decay=0.1, ema_decay=0.0, seed=o.seed)


def tokenized_corpus(o: LmOptions):
    """(tokenizer, training ids, held-out ids) for a run's options (data, vocab_size, context), checked.
    The tokenizer is trained on the training part only, deterministically: a resumed run, or the
    masked-diffusion LM on the same data, gets the same merges and ids."""
    train_text, held_text = split(read_corpus(o.data))  # context and vocab_size are in range: LmOptions checks
    tokenizer = train_tokenizer(train_text, o.vocab_size)
    train_ids = torch.tensor(tokenizer.encode(train_text).ids)
    held_ids = torch.tensor(tokenizer.encode(held_text).ids)
    check(len(train_ids) > o.context + 1, f"--data is too short for --context {o.context}")
    check(len(held_ids) >= o.context, f"--data's held-out tenth has {len(held_ids)} tokens, fewer than --context {o.context}")
    return tokenizer, train_ids, held_ids


def random_windows(ids: torch.Tensor, length: int, batch: int, generator: torch.Generator) -> torch.Tensor:
    """(batch, length) windows of `ids` at random starts: one training batch."""
    starts = torch.randint(len(ids) - length, (batch,), generator=generator)
    return torch.stack([ids[s:s + length] for s in starts.tolist()])


def write_model_folder(folder: Path, model: Transformer, tokenizer, context: int, info: dict, card: dict | None = None) -> None:
    """A Hugging Face folder (weights, tokenizer) plus genlab.json (its kind: the card registry.py reads) and
    genlab-train.json (the training record), written atomically."""
    with atomic_dir(folder) as tmp:
        (tmp / "genlab.json").write_text(json.dumps(card or {"kind": "causal-lm"}))
        save_hf(model, tmp, bos_token_id=0, eos_token_id=0)  # EOS is the tokenizer's first special token
        tokenizer.save(str(tmp / "tokenizer.json"))
        (tmp / "tokenizer_config.json").write_text(json.dumps({"eos_token": EOS, "bos_token": None, "model_max_length": context}))
        (tmp / "genlab-train.json").write_text(json.dumps(info))


@torch.no_grad()
def perplexity(model: Transformer, ids: torch.Tensor, context: int, batch: int = 16) -> float:
    """exp(mean next-token cross-entropy) over consecutive windows of `ids`."""
    windows = ids[: (len(ids) - 1) // context * context + 1]
    starts = list(range(0, len(windows) - 1, context))
    was = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(starts), batch):
        x = torch.stack([windows[s:s + context + 1] for s in starts[i:i + batch]])  # (b, context + 1)
        logits = model(x[:, :-1])  # (b, context, V)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten(), reduction="sum")
        total, count = total + float(loss), count + x[:, 1:].numel()
    model.train(was)
    return math.exp(total / max(count, 1))


class LmRun(Run):
    """out/checkpoints/step-N, out/model (a Hugging Face folder with its tokenizer) and out/samples."""

    kind, Options = "lm", LmOptions
    _perplexity: tuple = (None, 0.0)  # (step, held-out perplexity there)

    def build(self) -> torch.nn.Module:
        o = self.options
        self.tokenizer, self.train_ids, self.held_out_ids = tokenized_corpus(o)
        torch.manual_seed(o.seed)  # the initial weights
        self.model = build_model(self.tokenizer.get_vocab_size(), o.context, o.width, o.layers, o.heads)
        return self.model

    def train_config(self) -> TrainConfig:
        return lm_train_config(self.options)

    def steps(self) -> Iterator[StepStats]:
        T, B = self.options.context, self.trainer.batch

        def loss(model, g: torch.Generator) -> torch.Tensor:
            x = random_windows(self.train_ids, T, B, g)  # (B, T)
            return next_token_loss(model, x)

        yield from self.trainer.run(loss)

    def held_out_perplexity(self) -> float:
        """Measured once per step reached: save() and sample_grid() both report it at a checkpoint."""
        if self._perplexity[0] != self.trainer.step:
            self._perplexity = (self.trainer.step, perplexity(self.model, self.held_out_ids, self.options.context))
        return self._perplexity[1]

    def save_model(self) -> None:
        write_model_folder(self.out / "model", self.model, self.tokenizer, self.options.context,
                           {"step": self.trainer.step, "options": dataclasses.asdict(self.options), "train_seconds": round(self.trainer.seconds, 1),
                            "held_out_perplexity": self.held_out_perplexity()})

    def sample_grid(self, path: Path, prompts=("The for statement", "Exceptions are"), tokens: int = 40) -> None:
        """Sampled continuations (temperature 0.8, seed 0) written as text next to the checkpoints."""
        was = self.model.training
        self.model.eval()
        lines = [f"held-out perplexity {self.held_out_perplexity():.2f}\n"]
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for prompt in prompts:
                ids = self.tokenizer.encode(prompt).ids
                for _ in range(tokens):
                    logits = self.model(torch.tensor([ids[-self.options.context:]]))[0, -1]
                    ids.append(int(torch.multinomial((logits / 0.8).softmax(-1), 1, generator=g)))
                lines.append(self.tokenizer.decode(ids) + "\n")
        self.model.train(was)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".txt").write_text("\n".join(lines))
