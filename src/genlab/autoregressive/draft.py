"""A small draft model for speculative decoding, trained by distillation: `genlab train draft`.

    genlab train draft --out runs/draft                 # the bundled SmolLM2 writes, a 2-layer GPT learns to guess it
    genlab text "Rewrite: ..." --speculative draft --draft runs/draft/model

Sequence-level distillation (Kim & Rush 2016): the target model answers prompts built from
Python's own documentation, and the draft learns next-token prediction on the target's prompts
and replies, so it learns what this target writes rather than what people write. The draft
speaks the target's tokenizer, restricted to the `vocab_size - 1` ids most frequent in those
replies (draft id 0 stands for every other one): its embedding and head have 4096 rows instead
of 49152, so a guess costs a fraction of the target's pass. speculative.py keeps or rejects its
guesses exactly as it does prompt lookup's, so the text is the target's either way.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from genlab.autoregressive.speculative import POSITIONS, vocab_digest
from genlab.autoregressive.train_lm import lm_train_config, next_token_loss, random_windows
from genlab.errors import check
from genlab.nn.transformer import Transformer, TransformerConfig, save_hf
from genlab.store import atomic_dir, atomic_write_bytes
from genlab.training.loop import StepStats, TrainConfig
from genlab.training.options import DraftOptions
from genlab.training.run import Run

TASKS = ["Explain what this part of Python's documentation says: {}", "Summarise in two sentences: {}",
         "Rewrite this more simply: {}", "Give an example of the following in Python code: {}"]


def prompts(count: int) -> list[str]:
    """`count` task prompts over paragraphs of Python's documentation topics (shipped with Python)."""
    from pydoc_data.topics import topics

    paragraphs = [p.strip() for k in sorted(topics) for p in topics[k].split("\n\n") if 200 <= len(p.strip()) <= 700]
    check(count <= len(paragraphs) * len(TASKS), f"--prompts must be at most {len(paragraphs) * len(TASKS)}")
    step = max(1, len(paragraphs) // count)
    return [TASKS[i % len(TASKS)].format(" ".join(paragraphs[(i * step) % len(paragraphs)].split())) for i in range(count)]


def target_replies(target: str, count: int, tokens: int, threads: int = 8) -> list[list[int]]:
    """The target's chat prompt and reply, as token ids, for `count` prompts (seed i, its default
    sampling), written by `threads` generations at once sharing passes (text/batching.py)."""
    from genlab.progress import stage_progress
    from genlab.text.batching import batching
    from genlab.text.generator import TextGenerator

    gen = TextGenerator(target)
    gen.lm = batching(gen.lm, threads)
    asks = prompts(count)

    def reply(i: int) -> list[int]:
        ask = asks[i]
        while gen.room(gen.prompt_ids(ask)) < tokens and len(ask) > 40:  # a short context: a shorter paragraph
            ask = ask[:len(ask) * 2 // 3]
        written = gen.complete(ask, max_new_tokens=tokens, seed=i, speculative="off")
        advance(f"reply {i + 1} of {count}")
        return gen.prompt_ids(ask) + [t.token_id for t in written.tokens]

    with stage_progress(f"The target writes {count} replies to learn from", count) as advance, \
            ThreadPoolExecutor(threads) as pool:
        return list(pool.map(reply, range(count)))  # the first failure, if any, is raised here


class DraftRun(Run):
    """out/corpus.json (the target's replies, written once), out/checkpoints/step-N and out/model."""

    kind, Options = "draft", DraftOptions

    def build(self) -> torch.nn.Module:
        from genlab.text.sources import resolve
        from genlab.text.tokenizer import Tokenizer

        o = self.options
        corpus = self._corpus()
        self.digest = vocab_digest(Tokenizer.from_folder(resolve(o.target)))
        counts = Counter(t for seq in corpus for t in seq)
        self.ids = [t for t, _ in counts.most_common(o.vocab_size - 1)]  # draft id d + 1 <-> target id ids[d]
        to_draft = {t: d + 1 for d, t in enumerate(self.ids)}
        held = max(1, len(corpus) // 10)  # the last tenth of the replies, never trained on
        self.train_ids, self.held_out_ids = (torch.tensor([to_draft.get(t, 0) for seq in part for t in seq])
                                             for part in (corpus[:-held], corpus[-held:]))
        check(len(self.train_ids) > o.context + 1, f"the replies hold {len(self.train_ids)} tokens; --context {o.context} needs more")
        torch.manual_seed(o.seed)  # the initial weights
        self.model = Transformer(TransformerConfig(vocab_size=o.vocab_size, dim=o.width, n_layers=o.layers, n_heads=o.heads,
                                                   max_seq_len=POSITIONS, tie_embeddings=True))
        return self.model

    def _corpus(self) -> list[list[int]]:
        path = self.out / "corpus.json"
        if path.is_file():  # a resumed run trains on the same replies
            return json.loads(path.read_text())
        o = self.options
        corpus = target_replies(o.target, o.prompts, o.reply_tokens)
        atomic_write_bytes(path, json.dumps(corpus).encode())
        return corpus

    def train_config(self) -> TrainConfig:
        return lm_train_config(self.options)

    def steps(self) -> Iterator[StepStats]:
        T, B = self.options.context, self.trainer.batch

        def loss(model, g: torch.Generator) -> torch.Tensor:
            return next_token_loss(model, random_windows(self.train_ids, T, B, g))

        yield from self.trainer.run(loss)

    @torch.no_grad()
    def held_out_agreement(self) -> float:
        """How often the draft's most likely next token is the target's next token, on held-out replies."""
        was = self.model.training
        self.model.eval()
        T, ids, hits, total = self.options.context, self.held_out_ids, 0, 0
        for s in range(0, len(ids) - 1, T):
            x = ids[s:s + T + 1]
            guess = self.model(x[None, :-1])[0].argmax(-1)
            hits += int(((guess == x[1:]) & (x[1:] != 0)).sum())
            total += len(x) - 1
        self.model.train(was)
        return hits / max(total, 1)

    def save_model(self) -> None:
        o = self.options
        with atomic_dir(self.out / "model") as tmp:
            save_hf(self.model, tmp, bos_token_id=0, eos_token_id=0)
            (tmp / "genlab.json").write_text(json.dumps({"kind": "draft", "target": o.target, "vocab_digest": self.digest,
                                                         "ids": self.ids}))
            (tmp / "genlab-train.json").write_text(json.dumps({"step": self.trainer.step, "options": dataclasses.asdict(o),
                                                               "train_seconds": round(self.trainer.seconds, 1),
                                                               "held_out_agreement": round(self.held_out_agreement(), 4)}))

    def sample_grid(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".txt").write_text(f"held-out agreement with the target {self.held_out_agreement():.3f}\n")
