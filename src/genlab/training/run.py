"""A training run on disk, and `fit`, the loop every genlab trainer is driven by.

    run = GanRun.create(Path("runs/gan"), GanOptions(steps=500))    # or GanRun.resume(Path("runs/gan"))
    for stats in fit(run):
        print(stats.step, stats.loss)

A run folder holds checkpoints/step-N (weights, optimizer, random streams, the options and
the log so far, written atomically), log.jsonl (one row per step), samples/ and the model
folder the run exports. Every trainer is a `Run` subclass that says how to build its model
(`build`), its loss (`steps`), its export (`save_model`) and its samples (`sample_grid`);
creating, resuming, saving and the schedule of checkpoints and samples are written once, here.

A kill at any moment leaves the folder consistent: a checkpoint is whole or absent, and
log.jsonl never holds a step the newest checkpoint has not seen (it is rewritten only after
a checkpoint, and a resume restores it from the checkpoint's own copy).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import torch

from ..errors import GenlabError
from .loop import StepStats, Trainer, TrainConfig
from .options import OptionError, RunOptions, check_option

LOG = "log.jsonl"


class TrainLog:
    """out/log.jsonl: one row per step (loss, seconds, and whatever numbers the run adds, such as a
    GAN's two losses), the raw material of loss curves. Rows reach the file only after a checkpoint
    that has seen them, by one atomic rewrite; each checkpoint keeps its own copy."""

    def __init__(self, path: Path, rows: list[dict]):
        self.path, self.rows = path, rows

    def add(self, row: dict) -> None:
        self.rows.append(row)

    def text(self) -> str:
        return "".join(json.dumps(r) + "\n" for r in self.rows)

    def flush(self) -> None:
        from ..store import atomic_write_bytes

        atomic_write_bytes(self.path, self.text().encode())


def remove_stale_temps(out: Path) -> None:
    """Temporary folders a kill left behind mid-save (atomic_dir's `.NAME.xxxx`): never read, so removed."""
    stale = list((out / "checkpoints").glob(".step-*")) + [p for name in ("model", "adapter", LOG)
                                                            for p in out.glob(f".{name}.*")]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def prepare_out(out: Path) -> None:
    """`out` must be a folder genlab can write: one clear error before any work."""
    from ..store import writable_folder

    try:
        writable_folder(out, "out")
    except GenlabError as e:
        raise OptionError(str(e), "out") from None


class Run:
    """One trainer's run: subclasses set `kind` and `Options` and write build, steps, save_model, sample_grid."""

    kind: ClassVar[str]  # saved in each checkpoint: resume refuses another trainer's folder
    Options: ClassVar[type[RunOptions]]

    def __init__(self, out: Path, options: RunOptions, checkpoint: Path | None = None):
        self.out, self.options = Path(out), options
        self.parts: dict = {}  # numbers the last step adds to its log row (a GAN's two losses)
        model = self.build()
        if checkpoint is None:
            self.trainer = Trainer(model, self.train_config(), {"kind": self.kind, "options": dataclasses.asdict(options)})
            rows = []
        else:
            self.trainer = Trainer.resume(model, checkpoint, options.steps)
            self.trainer.extra = {"kind": self.kind, "options": dataclasses.asdict(options)}  # with what resume changed
            rows = self._rows_at(checkpoint)
        self.log = TrainLog(self.out / LOG, rows)
        if self.trainer.rank == 0:
            self.log.flush()  # a new run starts an empty log; a resumed one drops rows its checkpoint never saw

    @classmethod
    def create(cls, out: Path, options: RunOptions | None = None):
        """A new run in `out` with these options (the trainer's defaults if None)."""
        options = cls.Options() if options is None else options
        check_option(isinstance(options, cls.Options), f"{cls.__name__} takes {cls.Options.__name__}, "
                                                       f"not {type(options).__name__}")
        prepare_out(Path(out))
        return cls(out, options)

    @classmethod
    def resume(cls, out: Path, given: dict | None = None):
        """Continue the newest checkpoint in out/checkpoints with its saved options. `given` holds options
        passed again: steps may extend the run and checkpoint_every/sample_every may change; others must match."""
        out = Path(out)
        prepare_out(out)
        checkpoint = Trainer.latest(out / "checkpoints")
        check_option(checkpoint is not None, f"resume: no checkpoint in {out / 'checkpoints'}; start a new run instead", "resume")
        meta = Trainer.read_meta(checkpoint)
        check_option(meta["extra"].get("kind") == cls.kind, f"out {out} is not a `{cls.kind}` run", "out")
        if int(os.environ.get("RANK", "0")) == 0:
            remove_stale_temps(out)
        options = cls.Options.from_dict(meta["extra"]["options"]).resumed_with(given or {}, meta["step"])
        return cls(out, options, checkpoint)

    def _rows_at(self, checkpoint: Path) -> list[dict]:
        """The log as the checkpoint saw it (its own copy), else out/log.jsonl cut at its step."""
        saved = checkpoint / LOG
        path = saved if saved.is_file() else self.out / LOG
        rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
        return [r for r in rows if r["step"] <= self.trainer.step]

    # --- what a trainer writes ----------------------------------------------------------------

    def build(self) -> torch.nn.Module:
        """Load the data and build the model (initial weights from options.seed); return what the trainer trains."""
        raise NotImplementedError

    def train_config(self) -> TrainConfig:
        """The loop's settings for a new run; trainers override warm-up, weight decay, EMA or betas."""
        o = self.options
        return TrainConfig(steps=o.steps, batch_size=o.batch_size, lr=o.lr, seed=o.seed)

    def steps(self) -> Iterator[StepStats]:
        raise NotImplementedError

    def save_model(self) -> None:
        """Write the exported model (out/model or out/adapter), atomically."""
        raise NotImplementedError

    def sample_grid(self, path: Path) -> None:
        raise NotImplementedError

    # --- written once -----------------------------------------------------------------------------

    def save(self) -> Path:
        """A checkpoint (with the log so far), then the exported model, then log.jsonl. Under torchrun
        every rank calls it; rank 0 writes."""
        path = self.trainer.save(self.out / "checkpoints", files={LOG: self.log.text()})
        if self.trainer.rank == 0:
            self.save_model()
            self.log.flush()
        return path

    def curve(self, keys: tuple[str, ...], points: int = 300) -> list[dict]:
        """About `points` rows of the log with these keys, rounded: a loss curve to keep in the model folder."""
        rows = [r for r in self.log.rows if all(k in r for k in keys)]
        return [{k: round(r[k], 4) for k in keys} for r in rows[::max(1, len(rows) // points)]]


def fit(run: Run) -> Iterator[StepStats]:
    """Train `run` to its total: each step logged, checkpoints and samples on the options' schedule.

        for stats in fit(run): print(stats.step, stats.loss)
    """
    o, total = run.options, run.trainer.config.steps
    for s in run.steps():
        run.log.add({"step": s.step, "loss": s.loss, "seconds": s.seconds} | run.parts)
        if s.step % o.checkpoint_every == 0 or s.step == total:
            run.save()
        if run.trainer.rank == 0 and o.sample_every and (s.step % o.sample_every == 0 or s.step == total):
            run.sample_grid(run.out / "samples" / f"step-{s.step:07d}.png")
        yield s
