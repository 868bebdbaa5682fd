"""Speculative decoding: several tokens per pass of the model, with exactly the model's output.

Decoding one token reads every weight once, so a pass over k+1 positions costs little more
than a pass over one. A cheap *draft* guesses the next k tokens; one pass of the model scores
all of them, and the guesses it agrees with are kept (Leviathan et al. 2023, Chen et al. 2023):

    the draft proposes d_1..d_k, drawn from q_1..q_k   (prompt lookup: q_i is all on d_i)
    one pass gives the model's distributions p_1..p_{k+1} (after the sampling filters)
    for i = 1..k:  keep d_i with probability min(1, p_i(d_i) / q_i(d_i));
                   at the first rejection, draw from norm(max(0, p_i - q_i)) instead and stop
    all k kept:    draw one more token from p_{k+1}: it comes with the same pass

Each token then follows p exactly: the chance of emitting x is q(x) min(1, p(x)/q(x)) from a
kept guess, plus (1 - sum_y min(q(y), p(y))) norm(max(0, p - q))(x) from a rejection, and the
two add up to p(x). At temperature 0, p is all on its argmax: a guess is kept while it is the
argmax, so greedy text is token for token what decode.py's plain loop writes.

Two drafts. *Prompt lookup* (the default): find the last n tokens earlier in the prompt or the
text so far, and guess that what followed them then follows now. It costs nothing and pays when
the reply repeats its input (summaries, rewrites, code edits). A *trained draft* (`ModelDraft`,
made by `genlab train draft`, draft.py): a small GPT that guesses greedily what the model writes.
When guesses keep failing, guessing stops for a while (`Adaptive`), so open-ended text loses little.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from pathlib import Path
from typing import Iterator

import torch

from genlab.autoregressive.decode import DecodeStats, LanguageModel, TokenStep, token_step
from genlab.autoregressive.sampling import SamplingParams, filtered_logits, next_token
from genlab.errors import GenlabError, check


def accept(p: torch.Tensor, q: torch.Tensor | None, guess: int, rng: torch.Generator, greedy: bool) -> int | None:
    """Check one guess against the model's distribution p (V,): None if it is kept, else the token
    drawn in its place from norm(max(0, p - q)). q (V,) is the draft's distribution; None means all
    its mass was on the guess (prompt lookup). Greedy: keep the guess only if it is p's argmax."""
    if greedy:
        best = int(p.argmax())
        return None if best == guess else best
    q_guess = 1.0 if q is None else float(q[guess])
    if float(torch.rand((), generator=rng)) * q_guess < float(p[guess]):  # u < p/q, without dividing by 0
        return None
    residual = p.clone()
    if q is None:
        residual[guess] = 0.0
    else:
        residual = (residual - q).clamp_min(0.0)
    if float(residual.sum()) <= 0.0:  # p == q up to rounding: any draw from p is right
        residual = p
    return int(torch.multinomial(residual / residual.sum(), 1, generator=rng))


def target(logits: torch.Tensor, seen: torch.Tensor, params: SamplingParams, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """The distribution the plain loop would sample from (V,): the grammar mask and filters, then softmax.
    Greedy keeps raw probabilities: only their argmax matters."""
    return filtered_logits(logits, seen, params, allowed).softmax(dim=-1)


class PromptLookup:
    """Guess that the text goes on as it did the last time its current ending appeared."""

    def __init__(self, max_ngram: int = 3, min_ngram: int = 2):
        # a single matching token predicts little: with min_ngram 1, open-ended text made twice the guesses, half of them wrong
        self.max_ngram, self.min_ngram = max_ngram, min_ngram

    def propose(self, history: list[int], k: int) -> list[int]:
        """Up to k tokens: what followed the latest earlier occurrence of history's last n tokens,
        for the longest n (max_ngram down to min_ngram) that occurs."""
        if k <= 0:
            return []
        for n in range(min(self.max_ngram, len(history) - 1), self.min_ngram - 1, -1):
            tail = history[-n:]
            for start in range(len(history) - n - 1, -1, -1):  # latest first; not the tail itself
                if history[start:start + n] == tail:
                    return history[start + n:start + n + k]
        return []


POSITIONS = 4096  # a trained draft's RoPE tables: it sees the whole conversation, though it trains on windows


def vocab_digest(tokenizer) -> str:
    """A short fingerprint of a tokenizer's vocabulary: a draft only helps a target that spells tokens the same way."""
    vocab = sorted(tokenizer.vocab().items())
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


class ModelDraft:
    """A trained draft (`genlab train draft`), loaded for one target: DraftRun's folder, checked."""

    def __init__(self, folder: str | Path, tokenizer):
        folder = Path(folder).expanduser()
        meta_path = folder / "genlab.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        check(meta.get("kind") == "draft", f"--draft {folder} is not a draft model folder (make one with genlab train draft)", "draft")
        check(meta["vocab_digest"] == vocab_digest(tokenizer),
              f"--draft {folder} was trained for {meta['target']}, whose tokenizer differs from this model's; a draft "
              "must share the model's tokenizer: train one with genlab train draft --target MODEL", "draft")
        from genlab.nn.transformer import load_hf

        self.model = load_hf(folder).eval()
        self.ids = meta["ids"]
        self.to_draft = {t: d + 1 for d, t in enumerate(self.ids)}

    def proposer(self) -> "DraftProposer":
        """The guessing state of one generation (its own cache of the draft's keys and values)."""
        return DraftProposer(self)


class DraftProposer:
    """Guesses the next k tokens as the draft writes them greedily, feeding it only what it has not seen."""

    def __init__(self, draft: ModelDraft):
        self.draft, self.cache, self.fed = draft, None, []

    @torch.inference_mode()
    def propose(self, history: list[int], k: int) -> list[int]:
        if k <= 0 or len(history) + k > POSITIONS:
            return []
        model, to_draft = self.draft.model, self.draft.to_draft
        if self.cache is None:
            self.cache = model.new_cache(POSITIONS)
        same = 0  # the draft's cache keeps the longest prefix it shares with the text
        while same < min(len(self.fed), len(history)) and self.fed[same] == history[same]:
            same += 1
        self.cache.pos, self.fed = same, history[:same]
        new = history[same:]
        guesses = []
        while len(guesses) < k:
            logits = model(torch.tensor([[to_draft.get(t, 0) for t in new]]), self.cache, last_only=True)[0, -1]
            self.fed += new
            best = int(logits.argmax())
            if best == 0:  # a token outside the draft's vocabulary, which it cannot name
                break
            guesses.append(self.draft.ids[best - 1])
            new = guesses[-1:]
        return guesses


class Adaptive:
    """How many tokens to guess: each guessed row makes the pass longer (about a fifth of a one-row
    pass each, on the 4-bit CPU engine), so guess few until guesses are kept. k doubles after a
    guess kept whole, falls to what was kept after a miss, and drafting pauses for `pause` tokens
    when the recent guesses were mostly wrong. Decided from the counts alone, so a seed still
    reproduces its text. (k_start 2, doubling, k_max 16, min_ngram 2: the best of four settings
    tried on benchmarks/speculative.py; docs/benchmarks.md.)"""

    def __init__(self, draft, k_start: int = 2, k_max: int = 16, window: int = 6, min_rate: float = 0.3, pause: int = 16):
        self.draft, self.k, self.k_start, self.k_max = draft, k_start, k_start, k_max
        self.recent: deque[tuple[int, int]] = deque(maxlen=window)  # (proposed, accepted) of the last guesses
        self.min_rate, self.pause, self.paused = min_rate, pause, 0

    def propose(self, history: list[int], room: int) -> list[int]:
        if self.paused > 0:
            self.paused -= 1
            return []
        return self.draft.propose(history, min(self.k, room))

    def update(self, proposed: int, accepted: int) -> None:
        if not proposed:
            return
        self.k = min(2 * self.k, self.k_max) if accepted == proposed else max(1, accepted)
        self.recent.append((proposed, accepted))
        tried, kept = sum(p for p, _ in self.recent), sum(a for _, a in self.recent)
        if len(self.recent) == self.recent.maxlen and kept < self.min_rate * tried:
            self.paused, self.k = self.pause, self.k_start
            self.recent.clear()


def drafter_for(lm: LanguageModel, params: SamplingParams, draft=None) -> Adaptive | None:
    """The draft that params.speculative asks for, or None for the plain loop. auto drafts with prompt
    lookup on engines that score several positions in one pass (all of genlab's do); draft guesses with
    `draft`, a trained draft model (draft.py's ModelDraft)."""
    if params.speculative == "draft":
        if draft is None:
            raise GenlabError("speculative draft needs a draft model: give --draft FOLDER (make one with genlab train draft)",
                              "speculative")
        return Adaptive(draft.proposer())
    if params.speculative == "off" or not hasattr(lm, "forward_all"):
        return None
    return Adaptive(PromptLookup())


def decode(lm: LanguageModel, prompt_ids: list[int], params: SamplingParams, seed: int, drafter: Adaptive,
           stats: DecodeStats | None = None, constraint=None, guidance=None) -> Iterator[TokenStep]:
    """decode.decode's contract (one TokenStep per new token), with a pass of the model per run of kept guesses.
    `constraint` (structured.py) masks every distribution, and cuts the guesses at the first one it refuses;
    `guidance` (guidance.py) scores the same guesses without the prompt, in a pass of its own."""
    rng = torch.Generator().manual_seed(seed)
    limit = params.max_new_tokens
    cache = lm.new_cache(len(prompt_ids) + limit)
    history = list(prompt_ids)
    seen = torch.tensor(prompt_ids, dtype=torch.long)  # for the repetition penalty
    logits = lm.forward(prompt_ids, cache)  # prefill

    def allowed() -> torch.Tensor | None:
        return constraint.allowed(logits.shape[-1]) if constraint else None

    def guide(row: torch.Tensor, uncond_row: torch.Tensor | None) -> torch.Tensor:
        return guidance(row, uncond_row) if guidance else row

    uncond = guidance.prefill() if guidance else None
    token = next_token(guide(logits, uncond), seen, params, rng, allowed())  # the first token, as the plain loop draws it
    emitted = 0

    def emit(row: torch.Tensor, tok: int) -> TokenStep:
        nonlocal emitted, seen
        if constraint:
            constraint.consume(tok)
        step = token_step(lm, row, tok, params, emitted)
        emitted += 1
        history.append(tok)
        if params.repetition_penalty != 1.0:
            seen = torch.cat([seen, torch.tensor([tok])])
        return step

    step = emit(logits, token)
    yield step
    while not step.finish_reason:
        # `token` is written but not yet in the cache: one pass feeds it and the guesses after it
        start = len(history) - 1
        guesses = drafter.propose(history, limit - emitted - 1)
        if constraint:  # a guess the grammar refuses would be rejected anyway: do not pay to score it
            guesses = guesses[:constraint.valid_prefix(guesses)]
        rows = lm.forward_all([token] + guesses, cache, len(guesses) + 1)  # (k+1, V)
        urows = guidance.feed([token] + guesses) if guidance else [None] * len(rows)  # (k+1, V)
        kept = 0
        if stats is not None:
            stats.draft_tokens += len(guesses)
        for j, guess in enumerate(guesses):
            other = accept(target(guide(rows[j], urows[j]), seen, params, allowed()), None, guess, rng, params.greedy)
            token = guess if other is None else other
            step = emit(rows[j], token)
            yield step
            if other is not None:
                lm.rewind(cache, start + 1 + j)  # forget the rejected guesses' keys and values
                if guidance:
                    guidance.keep(1 + j)
                break
            kept += 1
            if stats is not None:
                stats.accepted_tokens += 1
            if step.finish_reason:
                break
        else:  # every guess kept: the pass also gave the next distribution
            token = next_token(guide(rows[-1], urows[-1]), seen, params, rng, allowed())
            step = emit(rows[-1], token)
            yield step
        drafter.update(len(guesses), kept)
