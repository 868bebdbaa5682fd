"""The training loop, shared by every model genlab trains.

It knows nothing about diffusion, GANs or GPTs: the caller passes a `loss_fn(model,
generator)` that draws its own batch. The loop is a generator of `StepStats`, so the
caller decides what to show, when to save samples and when to checkpoint:

    trainer = Trainer(model, TrainConfig(steps=2000, lr=1e-3))
    for stats in trainer.run(loss_fn):
        if stats.step % 500 == 0:
            trainer.save(out / "checkpoints")

Every random draw goes through `trainer.generator`, and a checkpoint holds the weights,
the EMA, the optimizer moments and that generator's state, so a resumed run continues
bit for bit: `Trainer.resume(model, folder)` then `run()` gives the same weights as a
run that was never stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import check
from ..store import atomic_dir

STATE_FILE = "state.safetensors"
TRAINER_FILE = "trainer.json"


@dataclass
class TrainConfig:
    steps: int = 4000
    batch_size: int = 128
    lr: float = 1e-3
    warmup: int = 200  # steps of linear learning-rate warm-up, then cosine decay to lr / 10
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    seed: int = 0

    def __post_init__(self):
        check(self.steps >= 1, f"--steps must be at least 1, got {self.steps}")
        check(self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}")
        check(self.lr > 0, f"--lr must be positive, got {self.lr}")

    def lr_at(self, step: int) -> float:
        """Learning rate for optimizer step `step` (0-based)."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.steps - self.warmup)
        return self.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


@dataclass
class StepStats:
    step: int  # optimizer steps done so far (1-based)
    steps: int  # the run's total
    loss: float
    lr: float
    seconds: float  # wall time of this step
    items_per_s: float  # batch_size / seconds


def trained_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The part of the state dict that training changes: every buffer and every parameter
    with requires_grad. That is the whole model when training from scratch, and only the
    adapters when fine-tuning with LoRA (the frozen base is not copied into checkpoints)."""
    return {k: v.detach() for k, v in model.state_dict(keep_vars=True).items()
            if not isinstance(v, torch.nn.Parameter) or v.requires_grad}


class EMA:
    """An exponential moving average of the weights (Polyak averaging). Samples from the
    average are much cleaner than from the raw weights, which jitter with every batch.
    decay 0 keeps a plain copy of the latest weights."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.clone() for k, v in trained_state(model).items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))  # average over fewer steps early on
        for k, v in trained_state(model).items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v, 1 - d)
            else:
                self.shadow[k].copy_(v)


class Trainer:
    def __init__(self, model: torch.nn.Module, config: TrainConfig, extra: dict | None = None):
        self.model, self.config = model, config
        self.extra = extra or {}  # saved with each checkpoint: what the caller needs to rebuild the run
        self.params = [p for p in model.parameters() if p.requires_grad]  # all of them, or only LoRA's adapters
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay)
        self.ema = EMA(model, config.ema_decay)
        self.generator = torch.Generator().manual_seed(config.seed)  # data, timesteps, noise: what loss_fn draws
        # Dropout draws from torch's global generator. The trainer keeps that stream's state as
        # its own and swaps it in for each step, so sampling between steps cannot shift it and a
        # resumed run draws the same masks.
        self.dropout_rng = torch.Generator().manual_seed(config.seed + 1).get_state()
        self.step = 0

    def run(self, loss_fn: Callable[[torch.nn.Module, torch.Generator], torch.Tensor]) -> Iterator[StepStats]:
        self.model.train()
        while self.step < self.config.steps:
            start = time.perf_counter()
            lr = self.config.lr_at(self.step)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(self.dropout_rng)
                loss = loss_fn(self.model, self.generator)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.dropout_rng = torch.get_rng_state()
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.optimizer.step()
            self.ema.update(self.model, self.step)
            self.step += 1
            seconds = time.perf_counter() - start
            yield StepStats(self.step, self.config.steps, loss.item(), lr, seconds, self.config.batch_size / seconds)

    # --- checkpoints -------------------------------------------------------------

    def save(self, folder: Path, keep: int = 2) -> Path:
        """Write checkpoints/step-NNNNNNN atomically (a temporary folder, then one rename),
        then delete all but the newest `keep`. A kill at any moment leaves a whole checkpoint."""
        from safetensors.torch import save_file

        final = folder / f"step-{self.step:07d}"
        with atomic_dir(final) as tmp:
            tensors = {f"model.{k}": v for k, v in trained_state(self.model).items()}
            tensors |= {f"ema.{k}": v for k, v in self.ema.shadow.items()}
            optim = self.optimizer.state_dict()
            for index, slots in optim["state"].items():
                tensors |= {f"optim.{index}.{name}": v for name, v in slots.items()}
            tensors["generator"] = self.generator.get_state()
            tensors["dropout_rng"] = self.dropout_rng
            seen: set[int] = set()
            for k, v in tensors.items():  # tied weights (an LM's embedding and output layer) are one tensor
                v = v.detach().contiguous()  # under two names; safetensors wants each stored on its own
                tensors[k] = v.clone() if v.data_ptr() in seen else v
                seen.add(v.data_ptr())
            save_file(tensors, str(tmp / STATE_FILE))
            meta = {"step": self.step, "config": dataclasses.asdict(self.config), "extra": self.extra,
                    "param_groups": optim["param_groups"]}
            (tmp / TRAINER_FILE).write_text(json.dumps(meta, indent=2))
        for old in sorted(p for p in folder.glob("step-*") if p.is_dir())[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    @staticmethod
    def latest(folder: Path) -> Path | None:
        done = sorted(p for p in folder.glob("step-*") if (p / TRAINER_FILE).is_file())
        return done[-1] if done else None

    @classmethod
    def newest_run_checkpoint(cls, out: Path) -> tuple[Path, dict]:
        """The checkpoint --resume continues in a run folder, and its metadata; a clear error if none."""
        checkpoint = cls.latest(out / "checkpoints")
        check(checkpoint is not None, f"--resume: no checkpoint in {out / 'checkpoints'}; start without --resume")
        return checkpoint, cls.read_meta(checkpoint)

    @staticmethod
    def read_meta(checkpoint: Path) -> dict:
        return json.loads((checkpoint / TRAINER_FILE).read_text())

    @classmethod
    def resume(cls, model: torch.nn.Module, checkpoint: Path, steps: int | None = None) -> "Trainer":
        """Rebuild a trainer from a checkpoint folder; `steps` may extend the run."""
        from safetensors.torch import load_file

        meta = cls.read_meta(checkpoint)
        config = TrainConfig(**meta["config"])
        if steps is not None:
            config = dataclasses.replace(config, steps=steps)
        tensors = load_file(str(checkpoint / STATE_FILE))
        saved = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        missing = set(trained_state(model)) - set(saved)
        check(not missing, f"{checkpoint} does not fit this model: it lacks {sorted(missing)[:3]}")
        model.load_state_dict(saved, strict=False)
        trainer = cls(model, config, meta["extra"])
        trainer.ema.shadow = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
        state: dict[int, dict[str, torch.Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, index, name = k.split(".", 2)
                state.setdefault(int(index), {})[name] = v
        trainer.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        trainer.generator.set_state(tensors["generator"])
        if "dropout_rng" in tensors:  # checkpoints written before dropout start a fresh stream
            trainer.dropout_rng = tensors["dropout_rng"]
        trainer.step = meta["step"]
        return trainer


def resume_steps(saved: dict, given: dict, done: int, same=lambda key, saved, given: saved == given) -> int | None:
    """Check the options a user passed again with --resume against the run's saved ones: all
    must match, except `steps`, which may extend the run. Returns that new total, or None."""
    given = dict(given)
    steps = given.pop("steps", None)
    for key, value in given.items():
        check(same(key, saved[key], value), f"--resume continues the run as it was saved: --{key.replace('_', '-')} is "
                                            f"{saved[key]!r} there, not {value!r}; drop the option or start a new --out")
    check(steps is None or steps > done, f"--steps must be more than the {done} steps already done, got {steps}")
    return steps



def options_trainer(model: torch.nn.Module, config: TrainConfig, kind: str, options: dict,
                    resume_from: tuple[Path, int | None] | None) -> Trainer:
    """A Trainer for a run that keeps its CLI options in its checkpoints (read back by resume_run):
    a new one, or the one saved at resume_from = (checkpoint, new total steps or None)."""
    if resume_from:
        return Trainer.resume(model, *resume_from)
    return Trainer(model, config, {"kind": kind, "options": options})


def resume_run(out: Path, kind: str, command: str, given: dict) -> tuple[dict, tuple[Path, int | None]]:
    """For runs that keep their CLI options in the checkpoint (extra = {"kind", "options"}): the saved
    options and (checkpoint, new total steps or None), after checking the run's kind and the options given again."""
    checkpoint, meta = Trainer.newest_run_checkpoint(out)
    check(meta["extra"].get("kind") == kind, f"{out} is not a `{command}` run")
    options = meta["extra"]["options"]
    steps = resume_steps(options, given, meta["step"])
    return options, (checkpoint, steps)
