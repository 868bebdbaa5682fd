"""`genlab train gan`: the min-max step, the saved generator, resume, and bad input."""

import shutil

import pytest
import torch

from test_cli import assert_one_line_error, run

TINY = ["train", "gan", "--width", "8", "--latent", "8", "--batch-size", "16", "--sample-every", "0"]


@pytest.mark.parametrize("loss", ["hinge", "non-saturating"])
def test_each_turn_trains_only_its_own_player(loss):
    """D's loss must give gradients to D alone and G's loss to G alone; G's turn sees the updated D."""
    from genlab.image.gan import Gan, GanConfig
    from genlab.train.gan import gan_step

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

    from genlab.image.gan import Gan

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
    from genlab.image.gan import Gan

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
