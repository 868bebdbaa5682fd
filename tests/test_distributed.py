"""Multi-process training (DDP with gloo on CPU), launched as a user would: torchrun with two processes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).parent


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS)}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_two_processes_take_the_full_batch_step_of_one(tmp_path):
    from safetensors.torch import load_file

    one = subprocess.run([sys.executable, str(TESTS / "ddp_worker.py"), str(tmp_path)], capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    two = torchrun(str(TESTS / "ddp_worker.py"), str(tmp_path), cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    solo, r0, r1 = (load_file(str(tmp_path / f"{name}.safetensors")) for name in ("rank0-of-1", "rank0-of-2", "rank1-of-2"))
    for k in ("weight", "bias"):
        assert torch.equal(r0[k], r1[k]), "the two processes' copies drifted apart"
        assert torch.allclose(r0[k], solo[k], atol=1e-6), "averaged gradients differ from the full batch's"
    assert torch.allclose(r0["losses"], solo["losses"], atol=1e-6)  # the logged loss is the mean over ranks
    assert r0["losses"][-1] < 0.1 * r0["losses"][0]


@pytest.mark.slow
def test_genlab_train_under_torchrun_checkpoints_and_resumes(tmp_path):
    """`torchrun ... genlab train gan`: one progress bar, one checkpoint holding both ranks' random
    streams; a resumed 2-process run ends where an unbroken one does; 1 process cannot resume it."""
    import shutil

    from safetensors.torch import load_file

    args = ["-m", "genlab", "train", "gan", "--width", "8", "--latent", "8", "--batch-size", "16", "--sample-every", "0",
            "--checkpoint-every", "2", "--steps", "4"]
    for name in ("a", "b"):
        done = torchrun(*args, "--out", str(tmp_path / name), cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("generator saved in") == 1  # rank 1 is quiet
    state = load_file(str(tmp_path / "a" / "checkpoints" / "step-0000004" / "state.safetensors"))
    assert {"generator", "generator.1", "dropout_rng", "dropout_rng.1"} <= state.keys()
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-0000004")
    done = torchrun("-m", "genlab", "train", "gan", "--resume", "--sample-every", "0", "--checkpoint-every", "2",
                    "--out", str(tmp_path / "b"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = (load_file(str(tmp_path / r / "model" / "model.safetensors")) for r in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)
    solo = subprocess.run([sys.executable, "-m", "genlab", "train", "gan", "--resume", "--out", str(tmp_path / "b")],
                          capture_output=True, text=True)
    assert solo.returncode == 2 and "written by 2 training process(es)" in solo.stderr, solo.stderr


@pytest.mark.slow
@pytest.mark.parametrize("command", [
    ["ar-image", "--width", "32", "--layers", "1", "--heads", "2"],
    ["lm", "--vocab-size", "300", "--context", "16", "--width", "32", "--layers", "1", "--heads", "2"],
    ["diffusion-lm", "--vocab-size", "300", "--context", "16", "--width", "32", "--layers", "1", "--heads", "2"],
    ["diffusion", "--resolution", "8"],
])
def test_every_trainer_runs_under_torchrun(tmp_path, command):
    """The other families' trainers on two processes: the run finishes and its checkpoint holds both ranks' streams."""
    from safetensors.torch import load_file

    done = torchrun("-m", "genlab", "train", *command, "--batch-size", "8", "--steps", "2", "--checkpoint-every", "2",
                    "--sample-every", "0", "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    state = load_file(str(tmp_path / "run" / "checkpoints" / "step-0000002" / "state.safetensors"))
    assert {"generator", "generator.1"} <= state.keys()
    assert (tmp_path / "run" / "model").is_dir()
