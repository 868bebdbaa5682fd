"""`genlab train gan`: the min-max step, the saved generator, resume, and bad input."""

import shutil

import pytest
import torch

from test_cli import assert_one_line_error, run

TINY = ["train", "gan", "--width", "8", "--latent", "8", "--batch-size", "16", "--sample-every", "0"]


@pytest.mark.parametrize("loss", ["hinge", "non-saturating"])
def test_each_turn_trains_only_its_own_player(loss):
    """D's loss must give gradients to D alone and G's loss to G alone; G's turn sees the updated D."""
    from genlab.gan.model import Gan, GanConfig
    from genlab.gan.train import gan_step

    torch.manual_seed(0)
    gan = Gan(GanConfig(resolution=8, latent=8, width=8, class_names=list("abc"), loss=loss))
    real, labels = torch.rand(6, 1, 8, 8) * 2 - 1, torch.tensor([0, 1, 2, 0, 1, 2])
    log = {}
    turns = gan_step(gan, real, labels, torch.Generator().manual_seed(0), log)
    G, D = gan.generator, gan.discriminator

    z = gan.noise(6, torch.Generator().manual_seed(0))

    def g_loss_now() -> float:  # G's loss against D as it is now (eval: no spectral-norm iteration)
        D.eval()
        with torch.no_grad():
            score = D(G(z, labels), labels)
        D.train()
        return (-score.mean() if loss == "hinge" else torch.nn.functional.softplus(-score).mean()).item()

    before = g_loss_now()
    next(turns).backward()
    assert all(p.grad is None for p in G.parameters()), "D's loss reached the generator"
    assert all(p.grad is not None for p in D.parameters()) and any(p.grad.any() for p in D.parameters())
    with torch.no_grad():  # what the Trainer does between the turns: step D
        for p in D.parameters():
            p -= 0.1 * p.grad
            p.grad = None
    d_after = {n: p.clone() for n, p in D.named_parameters()}

    after = g_loss_now()
    g_loss = next(turns)
    assert abs(g_loss.item() - after) < 0.1 * abs(after - before), (before, after, g_loss.item())  # the updated D
    D.zero_grad(set_to_none=True)
    g_loss.backward()
    assert all(p.grad is None for p in D.parameters()), "G's loss reached the discriminator"
    assert all(p.grad is not None for p in G.parameters()) and any(p.grad.any() for p in G.parameters())
    assert all(torch.equal(p, d_after[n]) for n, p in D.named_parameters())
    assert set(log) == {"d_loss", "g_loss", "d_real", "d_fake"}
    with pytest.raises(StopIteration):
        next(turns)


def test_trains_saves_resumes_bit_for_bit(tmp_path, capsys):
    import json

    from safetensors.torch import load_file

    from genlab.gan.model import Gan

    code, _, err = run(TINY + ["--steps", "8", "--checkpoint-every", "4", "--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    run(TINY + ["--steps", "8", "--checkpoint-every", "4", "--out", str(tmp_path / "b")], capsys)
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-0000008")  # as if killed after step 4
    code, _, err = run(["train", "gan", "--resume", "--sample-every", "0", "--checkpoint-every", "4",
                        "--out", str(tmp_path / "b")], capsys)
    assert code == 0 and "resuming at step 4 of 8" in err, err
    a, b = (load_file(str(tmp_path / r / "model" / "model.safetensors")) for r in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    logs = [[json.loads(line) for line in (tmp_path / r / "log.jsonl").read_text().splitlines()] for r in "ab"]
    assert [row["step"] for row in logs[1]] == list(range(1, 9))  # the resumed log holds each step once
    assert [row["d_loss"] for row in logs[0]] == [row["d_loss"] for row in logs[1]]
    gan = Gan.load(tmp_path / "a" / "model")
    labels = torch.arange(10)
    x = gan.generate(labels, seed=3)
    assert x.shape == (10, 1, 16, 16) and x.abs().max() <= 1
    assert torch.equal(x, gan.generate(labels, seed=3)) and not torch.equal(x, gan.generate(labels, seed=4))
    assert gan.info["step"] == 8 and gan.info["train_seconds"] > 0


def test_bad_input(tmp_path, capsys):
    from genlab.errors import GenlabError
    from genlab.gan.model import Gan

    code, _, err = run(TINY + ["--resolution", "12", "--out", str(tmp_path / "r")], capsys)
    assert_one_line_error(code, err, "power of two >= 8, got 12")
    code, _, err = run(TINY + ["--loss", "wasserstein", "--out", str(tmp_path / "r")], capsys)
    assert_one_line_error(code, err, "--loss must be hinge or non-saturating")
    code, _, err = run(TINY + ["--width", "0", "--out", str(tmp_path / "r")], capsys)
    assert_one_line_error(code, err, "--width and --latent must be at least 1")
    code, _, err = run(TINY + ["--ema", "1", "--out", str(tmp_path / "r")], capsys)
    assert_one_line_error(code, err, "--ema must be in [0, 1)")
    with pytest.raises(GenlabError, match="is not a GAN model folder"):
        Gan.load(tmp_path)


def test_resume_keeps_the_runs_schedule_and_cleans_up_after_a_kill(tmp_path, capsys):
    """--resume restores --checkpoint-every and --sample-every; a temporary checkpoint folder left by a kill
    mid-save is removed, and log.jsonl never runs ahead of the newest checkpoint."""
    import json

    out = tmp_path / "r"
    assert run(TINY[:-2] + ["--sample-every", "3", "--steps", "3", "--checkpoint-every", "3", "--out", str(out)], capsys)[0] == 0
    stale = out / "checkpoints" / ".step-0000004.abc123"  # as a kill while saving leaves it
    stale.mkdir()
    rows = (out / "log.jsonl").read_text()
    (out / "log.jsonl").write_text(rows + json.dumps({"step": 4, "loss": 0.0, "seconds": 0.0}) + "\n")  # a log ahead
    code, _, err = run(["train", "gan", "--resume", "--steps", "6", "--out", str(out)], capsys)
    assert code == 0 and "resuming at step 3 of 6" in err, err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000003", "step-0000006"]  # every 3, not 500
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step-0000003.png", "step-0000006.png"]
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == list(range(1, 7)) and logged[3]["loss"] != 0.0
    saved = json.loads((out / "checkpoints" / "step-0000006" / "trainer.json").read_text())["extra"]["options"]
    assert saved["checkpoint_every"] == 3 and saved["sample_every"] == 3 and saved["steps"] == 6


@pytest.mark.parametrize("args,fragment", [
    (["--lr", "inf"], "--lr must be a finite number, got inf"),
    (["--mode-seeking", "nan"], "--mode-seeking must be a finite number, got nan"),
    (["--d-lr-scale", "0"], "--d-lr-scale must be positive, got 0"),
    (["--checkpoint-every", "0"], "--checkpoint-every must be at least 1, got 0"),
    (["--sample-every", "-1"], "--sample-every must be 0 or more, got -1"),
])
def test_every_number_is_finite_and_in_range(tmp_path, capsys, args, fragment):
    code, _, err = run(TINY + ["--out", str(tmp_path / "r")] + args, capsys)
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "r").exists()  # refused before any work


def test_out_must_be_a_writable_folder(tmp_path, capsys):
    file = tmp_path / "file"
    file.write_text("")
    code, _, err = run(TINY + ["--out", str(file)], capsys)
    assert_one_line_error(code, err, f"--out {str(file)!r} is not a writable folder")


def test_options_are_a_dataclass_that_names_fields():
    """Python callers see field names, never flags; unknown keys are an error."""
    from genlab.errors import GenlabError
    from genlab.training.options import GanOptions

    with pytest.raises(GenlabError, match=r"^steps must be at least 1, got 0$"):
        GanOptions(steps=0)
    with pytest.raises(GenlabError, match="unknown option.s. stepz"):
        GanOptions.from_dict({"stepz": 3})
    assert GanOptions().lr == 2e-4 and GanOptions.from_dict({"steps": 3}).steps == 3
