"""`genlab train ar-image`: ImageGPT on the digits, exact likelihood, pixel-by-pixel sampling."""

import math
import shutil

import pytest
import torch

from test_cli import assert_one_line_error, run

TINY = ["train", "ar-image", "--width", "32", "--layers", "1", "--heads", "2", "--batch-size", "16", "--sample-every", "0"]


def tiny_gpt(seed: int = 0):
    from genlab.autoregressive.pixel_gpt import PixelGpt, build_model

    torch.manual_seed(seed)
    return PixelGpt(build_model(17, 10, 8, 32, 1, 2).eval(), 17, 8, [str(i) for i in range(10)])


def test_digits_quantise_losslessly():
    from genlab.data.digits import digits
    from genlab.autoregressive.pixel_gpt import dequantise, quantise

    from sklearn.datasets import load_digits

    x = digits(8, "all").x
    tokens = quantise(x, 17)
    assert torch.equal(tokens, torch.tensor(load_digits().images).flatten(1).long())  # the data's own 0..16
    assert torch.equal(dequantise(tokens, 17, 8), x)


def test_cached_sampling_matches_the_full_forward_and_the_likelihood():
    """Each cached one-token step must give the logits a full forward pass gives, and the
    image's bits/dim must be the mean -log2 of the probabilities it was drawn with."""
    from genlab.autoregressive.sampling import SamplingParams

    gpt = tiny_gpt()
    labels = torch.tensor([3, 7])
    steps = list(gpt.unfold(labels, SamplingParams(temperature=0), seed=0))
    assert len(steps) == 64 and (steps[0] >= 0).sum() == 2 and (steps[-1] >= 0).all()
    assert all(((a >= 0) & (a != b)).sum() == 0 for a, b in zip(steps, steps[1:]))  # drawn pixels never change
    tokens = steps[-1]
    x = torch.cat([(labels + 17)[:, None], tokens], dim=1)
    logits = gpt.model(x[:, :-1])[..., :17]
    assert torch.equal(logits.argmax(-1), tokens)  # greedy with the cache = greedy with full passes
    logp = logits.log_softmax(-1).gather(-1, tokens[..., None]).squeeze(-1)
    images = gpt.generate(labels, SamplingParams(temperature=0))
    assert gpt.bits_per_dim(images, labels) == pytest.approx(-logp.mean().item() / math.log(2), rel=1e-5)


def test_same_seed_same_images():
    gpt = tiny_gpt()
    labels = torch.arange(4)
    a = gpt.generate(labels, seed=1)
    assert torch.equal(a, gpt.generate(labels, seed=1)) and not torch.equal(a, gpt.generate(labels, seed=2))
    assert a.shape == (4, 1, 8, 8)


def test_trains_beats_uniform_and_resumes_bit_for_bit(tmp_path, capsys):
    from safetensors.torch import load_file

    from genlab.autoregressive.pixel_gpt import PixelGpt

    code, _, err = run(TINY + ["--steps", "60", "--lr", "1e-2", "--checkpoint-every", "30", "--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    bits = float(err.split("held-out NLL ")[1].split(" bits")[0])
    assert bits < 0.8 * math.log2(17), bits  # far better than not knowing the digits (4.09 bits)
    run(TINY + ["--steps", "60", "--lr", "1e-2", "--checkpoint-every", "30", "--out", str(tmp_path / "b")], capsys)
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-0000060")
    code, _, err = run(["train", "ar-image", "--resume", "--sample-every", "0", "--checkpoint-every", "30",
                        "--out", str(tmp_path / "b")], capsys)
    assert code == 0 and "resuming at step 30 of 60" in err, err
    a, b = (load_file(str(tmp_path / r / "model" / "model.safetensors")) for r in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    gpt = PixelGpt.load(tmp_path / "a" / "model")
    assert gpt.info["held_out_bits_per_dim"] == pytest.approx(bits, abs=1e-3)


def test_bad_input(tmp_path, capsys):
    from PIL import Image

    from genlab.errors import GenlabError
    from genlab.autoregressive.pixel_gpt import PixelGpt

    code, _, err = run(TINY + ["--levels", "1", "--out", str(tmp_path / "r")], capsys)
    assert_one_line_error(code, err, "--levels must be between 2 and 256")
    code, _, err = run(TINY + ["--resolution", "64", "--out", str(tmp_path / "r")], capsys)
    assert_one_line_error(code, err, "--resolution must be between 4 and 32")
    colour = tmp_path / "colour"
    colour.mkdir()
    for i in range(10):
        Image.new("RGB", (8, 8), (255, 0, i)).save(colour / f"{i}.png")
    code, _, err = run(TINY + ["--data", str(colour), "--out", str(tmp_path / "r")], capsys)
    assert_one_line_error(code, err, "greyscale")
    with pytest.raises(GenlabError, match="not an autoregressive image model folder"):
        PixelGpt.load(tmp_path)
