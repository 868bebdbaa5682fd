"""Slow: real training runs through the `genlab` command, killed and resumed, and trained far enough to draw digits."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

TRAIN = [sys.executable, "-m", "genlab", "train", "diffusion", "--data", "digits", "--batch-size", "32", "--sample-every", "0"]


def test_sigkill_then_resume_gives_the_same_weights(tmp_path):
    env = dict(os.environ, GENLAB_QUIET="1")
    straight = tmp_path / "straight"
    subprocess.run(TRAIN + ["--steps", "60", "--checkpoint-every", "20", "--out", str(straight)], check=True, env=env)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(TRAIN + ["--steps", "60", "--checkpoint-every", "20", "--out", str(killed)], env=env)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step-0000020" / "trainer.json").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "checkpoints" / "step-0000060").exists()
    subprocess.run(TRAIN + ["--steps", "60", "--checkpoint-every", "20", "--out", str(killed), "--resume"], check=True, env=env)
    a = load_file(str(straight / "checkpoints" / "step-0000060" / "state.safetensors"))
    b = load_file(str(killed / "checkpoints" / "step-0000060" / "state.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (straight / "model" / "model.safetensors").read_bytes() == (killed / "model" / "model.safetensors").read_bytes()


def test_training_from_scratch_learns_to_draw_digits(tmp_path):
    from genlab import ImageGenerator
    from genlab.eval.digits import DigitClassifier
    from genlab.image.generator import ImageRequest

    out = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "genlab", "train", "diffusion", "--steps", "500", "--sample-every", "0",
                    "--out", str(out)], check=True, env=dict(os.environ, GENLAB_QUIET="1"))
    gen, clf = ImageGenerator(str(out)), DigitClassifier.bundled()
    hits = 0
    for d in range(10):
        *_, last = gen.stream(ImageRequest(str(d), n=5, steps=20, seed=d))
        hits += (clf(last.xt).argmax(-1) == d).sum().item()
    assert hits / 50 >= 0.9
