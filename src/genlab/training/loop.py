"""The training loop, shared by every model genlab trains.

It knows nothing about diffusion, GANs or GPTs: the caller passes a `loss_fn(model,
generator)` that draws its own batch. The loop is a generator of `StepStats`, so the
caller decides what to show, when to save samples and when to checkpoint:

    trainer = Trainer(model, TrainConfig(steps=2000, batch_size=64, lr=1e-3))
    for stats in trainer.run(loss_fn):
        if stats.step % 500 == 0:
            trainer.save(out / "checkpoints")

Every random draw goes through `trainer.generator`, and a checkpoint holds the weights,
the EMA, the optimizer moments and that generator's state, so a resumed run continues
bit for bit: `Trainer.resume(model, folder)` then `run()` gives the same weights as a
run that was never stopped.

Under torchrun the same loop trains on several processes: each draws its share of the
batch (`trainer.batch`) and the gradients are averaged after backward (distributed.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import check
from ..store import atomic_dir
from . import distributed
from .options import check_option

STATE_FILE = "state.safetensors"
TRAINER_FILE = "trainer.json"
RANK_STRIDE = 7919  # rank r's random streams start from seed + r * RANK_STRIDE


@dataclass
class TrainConfig:
    steps: int  # no defaults for these three: each trainer's options have them (options.py)
    batch_size: int
    lr: float
    warmup: int = 200  # steps of linear learning-rate warm-up, then cosine decay to lr / 10
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    seed: int = 0
    betas: tuple[float, float] = (0.9, 0.999)  # Adam's moment decays; GANs use beta1 = 0.5 (Radford et al. 2016)

    def __post_init__(self):
        check_option(self.steps >= 1, f"steps must be at least 1, got {self.steps}", "steps")
        check_option(self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}", "batch_size")
        check_option(math.isfinite(self.lr) and self.lr > 0, f"lr must be positive, got {self.lr}", "lr")

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
    loss: float  # the batch's loss (a GAN's step yields two, D's and G's: this is their sum)
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
        # A model may ask for a different learning rate per part (a GAN's discriminator learns faster): lr_groups()
        # -> [(parameters, multiplier), ...]. Most models have one group at the run's learning rate.
        groups = model.lr_groups() if hasattr(model, "lr_groups") else [(self.params, 1.0)]
        self.optimizer = torch.optim.AdamW([{"params": [p for p in ps if p.requires_grad], "lr_scale": scale}
                                            for ps, scale in groups],
                                           lr=config.lr, weight_decay=config.weight_decay, betas=tuple(config.betas))
        self.rank, self.world = distributed.setup()  # (0, 1) unless started by torchrun
        check_option(config.batch_size % self.world == 0,
                     f"batch_size {config.batch_size} must be a multiple of the {self.world} processes", "batch_size")
        self.batch = config.batch_size // self.world  # what each process draws per step
        if self.world > 1:
            distributed.broadcast_state(model)  # every rank starts from rank 0's weights
        self.ema = EMA(model, config.ema_decay)
        # Data, timesteps, noise: what loss_fn draws. Each rank has its own stream.
        self.generator = torch.Generator().manual_seed(config.seed + RANK_STRIDE * self.rank)
        # Dropout draws from torch's global generator. The trainer keeps that stream's state as
        # its own and swaps it in for each step, so sampling between steps cannot shift it and a
        # resumed run draws the same masks.
        self.dropout_rng = torch.Generator().manual_seed(config.seed + 1 + RANK_STRIDE * self.rank).get_state()
        self.step = 0
        self.seconds = 0.0  # time spent in optimizer steps, over the whole run (saved with checkpoints)

    def run(self, loss_fn: Callable[[torch.nn.Module, torch.Generator], torch.Tensor | Iterator[torch.Tensor]]
            ) -> Iterator[StepStats]:
        """Train to config.steps. loss_fn(model, generator) returns the batch's loss, or yields several
        losses in turn: after each, the parameters that loss reached take an optimizer step, before the
        next is computed. A GAN yields its discriminator's loss, then its generator's (gan/train.py)."""
        self.model.train()
        while self.step < self.config.steps:
            start = time.perf_counter()
            lr = self.config.lr_at(self.step)
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)  # checkpoints from before lr_groups have none
            total = 0.0
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(self.dropout_rng)
                losses = loss_fn(self.model, self.generator)
                for loss in [losses] if isinstance(losses, torch.Tensor) else losses:
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if self.world > 1:
                        loss = distributed.average_gradients(self.params, loss)
                    torch.nn.utils.clip_grad_norm_(self.params, 1.0)
                    self.optimizer.step()  # parameters without a gradient (set_to_none above) stay as they are
                    total += loss.item()
                self.dropout_rng = torch.get_rng_state()
            if self.world > 1:
                distributed.broadcast_state(self.model, buffers_only=True)
            self.ema.update(self.model, self.step)
            self.step += 1
            seconds = time.perf_counter() - start
            self.seconds += seconds
            yield StepStats(self.step, self.config.steps, total, lr, seconds, self.config.batch_size / seconds)

    # --- checkpoints -------------------------------------------------------------

    def save(self, folder: Path, keep: int = 2, files: dict[str, str] | None = None) -> Path:
        """Write checkpoints/step-NNNNNNN atomically (a temporary folder, then one rename), with
        `files` (name -> text) inside, then delete all but the newest `keep` and any temporary folder
        an earlier kill left. A kill at any moment leaves a whole checkpoint.
        Under torchrun every rank calls it (rank 0 writes every rank's random streams)."""
        from safetensors.torch import save_file

        final = folder / f"step-{self.step:07d}"
        streams = {"generator": self.generator.get_state(), "dropout_rng": self.dropout_rng}
        if self.world > 1:
            streams = {f"{name}.{r}" if r else name: state for name, own in streams.items()
                       for r, state in enumerate(distributed.gather_states(own))}
        if self.rank != 0:
            distributed.barrier()  # until rank 0 has written it
            return final
        with atomic_dir(final) as tmp:
            tensors = {f"model.{k}": v for k, v in trained_state(self.model).items()}
            tensors |= {f"ema.{k}": v for k, v in self.ema.shadow.items()}
            optim = self.optimizer.state_dict()
            for index, slots in optim["state"].items():
                tensors |= {f"optim.{index}.{name}": v for name, v in slots.items()}
            tensors |= streams
            seen: set[int] = set()
            for k, v in tensors.items():  # tied weights (an LM's embedding and output layer) are one tensor
                v = v.detach().contiguous()  # under two names; safetensors wants each stored on its own
                tensors[k] = v.clone() if v.data_ptr() in seen else v
                seen.add(v.data_ptr())
            save_file(tensors, str(tmp / STATE_FILE))
            meta = {"step": self.step, "config": dataclasses.asdict(self.config), "extra": self.extra,
                    "param_groups": optim["param_groups"], "processes": self.world,
                    "seconds": self.seconds}
            (tmp / TRAINER_FILE).write_text(json.dumps(meta, indent=2))
            for name, text in (files or {}).items():
                (tmp / name).write_text(text)
        stale = list(folder.glob(".step-*"))  # this save's own is renamed by now: any left is a kill's
        for old in sorted(p for p in folder.glob("step-*") if p.is_dir())[:-keep] + stale:
            shutil.rmtree(old, ignore_errors=True)
        distributed.barrier()
        return final

    @staticmethod
    def latest(folder: Path) -> Path | None:
        done = sorted(p for p in folder.glob("step-*") if (p / TRAINER_FILE).is_file())
        return done[-1] if done else None

    @staticmethod
    def read_meta(checkpoint: Path) -> dict:
        return json.loads((checkpoint / TRAINER_FILE).read_text())

    @classmethod
    def resume(cls, model: torch.nn.Module, checkpoint: Path, steps: int | None = None) -> "Trainer":
        """Rebuild a trainer from a checkpoint folder; `steps` may extend the run."""
        from ..store import load_weights

        meta = cls.read_meta(checkpoint)
        saved_world, world = meta.get("processes", 1), int(os.environ.get("WORLD_SIZE", "1"))
        check(saved_world == world, f"{checkpoint} was written by {saved_world} training process(es); "
                                    f"resume it with the same number (torchrun --nproc_per_node {saved_world})")
        config = TrainConfig(**meta["config"])
        if steps is not None:
            config = dataclasses.replace(config, steps=steps)
        tensors = load_weights(checkpoint / STATE_FILE)
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
        own = f".{trainer.rank}" if trainer.rank else ""
        trainer.generator.set_state(tensors["generator" + own])
        if "dropout_rng" + own in tensors:  # checkpoints written before dropout start a fresh stream
            trainer.dropout_rng = tensors["dropout_rng" + own]
        trainer.step, trainer.seconds = meta["step"], meta.get("seconds", 0.0)
        return trainer
