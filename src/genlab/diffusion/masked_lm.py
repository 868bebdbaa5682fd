"""A masked-diffusion language model (MDLM, Sahoo et al. 2024; LLaDA, Nie et al. 2025): `genlab train diffusion-lm`.

    genlab train diffusion-lm --data pydoc --out runs/diffusion-lm

    lm = DiffusionLm.load("runs/diffusion-lm/model")
    lm.generate("The for statement", tokens=64, steps=64, seed=0)

A GPT writes left to right, one token per network call. A masked-diffusion LM fills in a
whole block, in any order, and can reveal several tokens per call:

    forward process  each token of x0 becomes MASK independently with probability t
                     (the linear schedule alpha_t = 1 - t), so x1 is all MASK
    network          the GPT of lm.py with its causal mask lifted (genlab's transformer with
                     causal=False, nn/transformer.py): it sees the partly masked
                     xt and guesses x0 at every position (logits over the real vocabulary)
    loss             cross-entropy at the masked positions, weighted by 1/t: in expectation an
                     upper bound on -log p(x0) per token (the NELBO)
    sampling         from [prompt] + MASKs, step t -> s reveals each masked position with
                     probability (t - s) / t, its token drawn from the network's guess

The data, the tokenizer (plus one MASK id) and the model shape are those of `genlab train lm`,
so the held-out perplexity bound here and the GPT's held-out perplexity score the same tokens.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from genlab.errors import check
from genlab.nn.transformer import Transformer, load_hf
from genlab.autoregressive.sampling import top_k_filter
from genlab.autoregressive.train_lm import build_model, lm_train_config, random_windows, tokenized_corpus, write_model_folder
from genlab.training.loop import StepStats, TrainConfig
from genlab.training.options import DiffusionLmOptions
from genlab.training.run import Run

KIND = "diffusion-lm"
T_MIN = 1e-3  # t is clamped here, so the 1/t weight stays finite
HELD_OUT_DRAWS = 4  # (t, masks) draws per held-out window
MASK_GLYPH = "░"  # how decode() shows a still-masked position


# --- the network -----------------------------------------------------------------

def build_diffusion_model(vocab_size: int, context: int, width: int, layers: int, heads: int) -> Transformer:
    """lm.py's GPT, bidirectional (every position attends to the whole sequence), with one more
    embedding row: MASK = vocab_size, the last id."""
    return build_model(vocab_size + 1, context, width, layers, heads, causal=False)


def x0_logits(model: Transformer, xt: torch.Tensor, mask_id: int) -> torch.Tensor:
    """The network's guess of x0 at every position, (B, L) -> (B, L, V): logits over the real
    vocabulary. x0 is never MASK, so its logit (the last one) is dropped, which is the same as
    setting it to -inf (MDLM's "zero masking probabilities")."""
    return model(xt)[..., :mask_id]


# --- the loss: forward process and NELBO ---------------------------------------------

def draw_t(batch: int, generator: torch.Generator) -> torch.Tensor:
    """t ~ U(0, 1) per sequence, stratified (MDLM's low-discrepancy sampler): one draw in each of
    `batch` equal slices of [0, 1], so every batch spans all mask rates and the loss varies less."""
    u = torch.rand(batch, generator=generator)
    return ((torch.arange(batch) + u) / batch).clamp_min(T_MIN)  # (B,)


def add_masks(x0: torch.Tensor, t: torch.Tensor, mask_id: int, generator: torch.Generator) -> torch.Tensor:
    """The forward process q(xt | x0): each token of row b becomes MASK with probability t[b].
    x0: (B, L) -> xt: (B, L)."""
    masked = torch.rand(x0.shape, generator=generator) < t[:, None]  # (B, L)
    return torch.where(masked, mask_id, x0)


def nelbo(model, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, mask_id: int) -> torch.Tensor:
    """sum over masked positions of -log p(x0_i | xt) / t, divided by B * L: nats per token.

    Its expectation over t ~ U(0, 1) and the masks is the continuous-time NELBO of MDLM for
    alpha_t = 1 - t (LLaDA's training loss), an upper bound on -log p(x0) / L."""
    masked = xt == mask_id  # (B, L)
    ce = F.cross_entropy(x0_logits(model, xt, mask_id).transpose(1, 2), x0, reduction="none")  # (B, L)
    return (ce * masked / t[:, None]).sum() / x0.numel()


def diffusion_loss(model, x0: torch.Tensor, mask_id: int, generator: torch.Generator) -> torch.Tensor:
    """One batch's loss: draw t, mask x0 with it, score the network's guesses at the masks. x0: (B, L)."""
    t = draw_t(len(x0), generator)
    return nelbo(model, x0, add_masks(x0, t, mask_id, generator), t, mask_id)


@torch.no_grad()
def perplexity_bound(model, ids: torch.Tensor, context: int, mask_id: int, draws: int = HELD_OUT_DRAWS,
                     batch: int = 16) -> float:
    """exp(NELBO per token) over consecutive windows of `ids`: an upper bound on the model's
    perplexity there, up to Monte Carlo noise.

    It measures what lm.perplexity measures, exp(nats per token) on windows of `context`
    tokens, bounded from above rather than exact: on the same tokenizer and held-out text, a
    diffusion LM whose bound is below a GPT's perplexity models that text better (a bound above
    it decides nothing). Each window is scored `draws` times, with its own t and masks from a
    generator seeded 0, so the same weights always give the same number.
    """
    g = torch.Generator().manual_seed(0)
    windows = ids[: len(ids) // context * context].view(-1, context)  # (N, L)
    was = model.training
    model.eval()
    total = 0.0
    for i in range(0, len(windows), batch):
        x0 = windows[i:i + batch].repeat(draws, 1)  # (draws * b, L): each window's copies land in different strata of t
        total += float(diffusion_loss(model, x0, mask_id, g)) * x0.numel()
    model.train(was)
    return math.exp(total / (windows.numel() * draws))


# --- sampling: the reverse process ------------------------------------------------------

@dataclass
class UnmaskStep:
    index: int  # 1-based: this is step `index` of `total` (= network calls so far)
    total: int
    t: float  # the mask level after this step: 1 - index / total, 0 after the last
    ids: torch.Tensor  # (P + L,) the prompt and the sequence so far; mask_id where still masked
    revealed: int  # positions this step revealed


@torch.no_grad()
def unmask(model, prompt_ids: Sequence[int], mask_id: int, tokens: int = 64, steps: int = 64, temperature: float = 1.0,
           top_k: int = 0, seed: int = 0) -> Iterator[UnmaskStep]:
    """[prompt] + `tokens` MASKs -> text, in `steps` network calls; yields the sequence after each.

        for step in unmask(model, ids, mask_id, tokens=32, steps=32): print(step.index, step.revealed)

    temperature 0 takes the most likely token. The same seed gives the same sequence.
    """
    check(tokens >= 1, f"tokens must be at least 1, got {tokens}")
    check(steps >= 1, f"steps must be at least 1, got {steps}")
    check(temperature >= 0, f"temperature must be >= 0, where 0 means greedy (got {temperature})")
    g = torch.Generator().manual_seed(seed)
    x = torch.tensor([*prompt_ids, *[mask_id] * tokens])  # (P + L,): x1, all MASK after the prompt
    for i in range(steps):
        t, s = 1 - i / steps, 1 - (i + 1) / steps
        # 1. The network's guess of x0 at every position, from the current xt.
        logits = x0_logits(model, x[None], mask_id)[0]  # (P + L, V)
        if temperature == 0:
            guess = logits.argmax(-1)
        else:
            probs = top_k_filter(logits / temperature, top_k).softmax(-1)
            guess = torch.multinomial(probs, 1, generator=g)[:, 0]  # (P + L,)
        # 2. The absorbing posterior q(xs | xt, x0) for alpha_t = 1 - t: a masked position is revealed
        #    with probability (alpha_s - alpha_t) / (1 - alpha_t) = (t - s) / t (1 at the last step) and
        #    stays masked otherwise; the prompt and tokens already revealed never change.
        reveal = (x == mask_id) & (torch.rand(len(x), generator=g) < (t - s) / t)  # (P + L,)
        x = torch.where(reveal, guess, x)
        yield UnmaskStep(i + 1, steps, s, x, int(reveal.sum()))


@dataclass
class DiffusionLm:
    """A trained masked-diffusion LM: `DiffusionLm.load("runs/diffusion-lm/model").generate("The for statement")`."""

    model: Transformer  # bidirectional: model.cfg.causal is False
    tokenizer: object  # a tokenizers.Tokenizer
    mask_id: int

    @classmethod
    def load(cls, folder: str | Path) -> "DiffusionLm":
        """A `genlab train diffusion-lm` model folder (out/model)."""
        from tokenizers import Tokenizer

        from ..registry import read_card

        folder = Path(folder).expanduser()
        meta = read_card(folder)
        if meta is None and (folder / "genlab-train.json").is_file():  # folders written before genlab.json carried the kind
            meta = json.loads((folder / "genlab-train.json").read_text())
        check(isinstance(meta, dict) and meta.get("kind") == KIND and "mask_id" in meta,
              f"{folder} is not a `genlab train diffusion-lm` model folder (its genlab.json must say kind 'diffusion-lm')")
        model = load_hf(folder, causal=False)  # an ordinary Llama folder: the mask is what genlab.json's kind says
        return cls(model, Tokenizer.from_file(str(folder / "tokenizer.json")), meta["mask_id"])

    def unmask(self, prompt: str = "", tokens: int = 64, steps: int = 64, temperature: float = 1.0, top_k: int = 0,
               seed: int = 0) -> Iterator[UnmaskStep]:
        """The steps of unmask() after `prompt`; show(step) is one frame of the trajectory."""
        ids = self.tokenizer.encode(prompt).ids
        context = self.model.cfg.max_seq_len
        check(len(ids) + tokens <= context, f"the prompt ({len(ids)} tokens) and tokens={tokens} must fit in the "
                                            f"model's context of {context} tokens")
        yield from unmask(self.model, ids, self.mask_id, tokens, steps, temperature, top_k, seed)

    def generate(self, prompt: str = "", tokens: int = 64, steps: int = 64, temperature: float = 1.0, top_k: int = 0,
                 seed: int = 0) -> str:
        """The `tokens` new tokens after `prompt`, as text (the prompt not included)."""
        *_, last = self.unmask(prompt, tokens, steps, temperature, top_k, seed)
        return self.show(last.ids[-tokens:])

    def show(self, seq: UnmaskStep | torch.Tensor) -> str:
        """Text of a step's ids (or of ids), each still-masked position shown as MASK_GLYPH."""
        ids = seq.ids if isinstance(seq, UnmaskStep) else seq
        runs = itertools.groupby(ids.tolist(), key=lambda i: i == self.mask_id)
        return "".join(MASK_GLYPH * len(list(run)) if masked else self.tokenizer.decode(list(run)) for masked, run in runs)

    def perplexity_bound(self, text: str) -> float:
        """The upper bound on this model's perplexity on `text` that training reports for its held-out
        part (perplexity_bound above, on windows of the model's context)."""
        ids = torch.tensor(self.tokenizer.encode(text).ids)
        context = self.model.cfg.max_seq_len
        check(len(ids) >= context, f"the text has {len(ids)} tokens, fewer than the model's context of {context}")
        return perplexity_bound(self.model, ids, context, self.mask_id)


# --- the run behind `genlab train diffusion-lm` ------------------------------------------

class DiffusionLmRun(Run):
    """out/checkpoints/step-N, out/model (a Hugging Face folder with its tokenizer and genlab-train.json)
    and out/samples; the same layout and options as lm.LmRun."""

    kind, Options = KIND, DiffusionLmOptions
    _bound: tuple = (None, 0.0)  # (step, held-out perplexity bound there)

    def build(self) -> torch.nn.Module:
        o = self.options
        self.tokenizer, self.train_ids, self.held_out_ids = tokenized_corpus(o)  # lm.py's: the same merges and ids
        torch.manual_seed(o.seed)  # the initial weights
        self.model = build_diffusion_model(self.tokenizer.get_vocab_size(), o.context, o.width, o.layers, o.heads)
        return self.model

    def train_config(self) -> TrainConfig:
        return lm_train_config(self.options)

    @property
    def mask_id(self) -> int:
        return self.tokenizer.get_vocab_size()

    def steps(self) -> Iterator[StepStats]:
        T, B = self.options.context, self.trainer.batch

        def loss(model, g: torch.Generator) -> torch.Tensor:
            x0 = random_windows(self.train_ids, T, B, g)  # (B, T)
            return diffusion_loss(model, x0, self.mask_id, g)

        yield from self.trainer.run(loss)

    def held_out_perplexity_bound(self) -> float:
        """Measured once per step reached: save() and sample_grid() both report it at a checkpoint."""
        if self._bound[0] != self.trainer.step:
            bound = perplexity_bound(self.model, self.held_out_ids, self.options.context, self.mask_id)
            self._bound = (self.trainer.step, bound)
        return self._bound[1]

    def save_model(self) -> None:
        write_model_folder(self.out / "model", self.model, self.tokenizer, self.options.context,
                           {"step": self.trainer.step, "options": dataclasses.asdict(self.options),
                            "train_seconds": round(self.trainer.seconds, 1),
                            "held_out_perplexity_bound": self.held_out_perplexity_bound()},
                           card={"kind": KIND, "mask_id": self.mask_id})

    def sample_grid(self, path: Path, prompts=("The for statement", "Exceptions are"), tokens: int = 40) -> None:
        """Sampled continuations (one token revealed per step on average, temperature 0.8, seed 0),
        written as text next to the checkpoints."""
        was = self.model.training
        self.model.eval()
        lm = DiffusionLm(self.model, self.tokenizer, self.mask_id)
        lines = [f"held-out perplexity bound {self.held_out_perplexity_bound():.2f}\n"]
        lines += [prompt + lm.generate(prompt, tokens, steps=tokens, temperature=0.8, seed=0) + "\n" for prompt in prompts]
        self.model.train(was)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".txt").write_text("\n".join(lines))
