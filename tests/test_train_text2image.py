"""genlab train vae / text2image: the two steps of latent text-to-image, with resume, on the shapes world."""

import json

import pytest
import torch
from safetensors.torch import load_file

from genlab.image.generator import ImageGenerator
from genlab.image.text2image import is_text2image
from test_cli import assert_one_line_error, run

VAE = ["--batch-size", "4", "--checkpoint-every", "2", "--sample-every", "0"]
T2I = ["--images", "24", "--batch-size", "4", "--checkpoint-every", "2", "--sample-every", "0"]


def _weights(folder):
    return load_file(str(sorted((folder / "checkpoints").glob("step-*"))[-1] / "state.safetensors"))


def test_vae_then_text2image_then_image(tmp_path, capsys):
    vae, t2i = tmp_path / "vae", tmp_path / "t2i"
    assert run(["train", "vae", "--out", str(vae), "--steps", "2", "--sample-every", "2"] + VAE[:2], capsys)[0] == 0
    config = json.loads((vae / "model" / "config.json").read_text())
    assert config["latent_channels"] == 4 and config["scaling_factor"] > 0  # measured, not SD's 0.18215
    assert (vae / "samples" / "step-0000002.png").is_file()
    code, _, err = run(["train", "text2image", "--vae", str(vae), "--out", str(t2i), "--steps", "2", "--sample-every", "2"]
                       + T2I[:4] + ["--layout", "8", "--layout-warmup", "3"], capsys)
    assert code == 0, err
    assert is_text2image(t2i / "model") and (t2i / "samples" / "step-0000002.png").is_file()
    assert (t2i / "model" / "layout" / "model.safetensors").is_file()
    [img] = ImageGenerator(str(t2i)).generate("a red circle above a blue square", steps=2, seed=0)
    assert img.size == (32, 32)


@pytest.mark.slow
def test_vae_resume_is_bit_identical(tmp_path, capsys):
    straight, resumed = tmp_path / "a", tmp_path / "b"
    assert run(["train", "vae", "--out", str(straight), "--steps", "4"] + VAE, capsys)[0] == 0
    assert run(["train", "vae", "--out", str(resumed), "--steps", "2"] + VAE, capsys)[0] == 0
    assert run(["train", "vae", "--out", str(resumed), "--steps", "4", "--resume"] + VAE, capsys)[0] == 0
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_text2image_resume_is_bit_identical_and_keeps_its_options(tmp_path, capsys):
    vae = tmp_path / "vae"
    assert run(["train", "vae", "--out", str(vae), "--steps", "1"] + VAE, capsys)[0] == 0
    straight, resumed = tmp_path / "a", tmp_path / "b"
    common = ["--vae", str(vae)] + T2I
    assert run(["train", "text2image", "--out", str(straight), "--steps", "4"] + common, capsys)[0] == 0
    assert run(["train", "text2image", "--out", str(resumed), "--steps", "2"] + common, capsys)[0] == 0
    code, _, err = run(["train", "text2image", "--out", str(resumed), "--steps", "4", "--resume", "--lr", "0.1"] + common, capsys)
    assert_one_line_error(code, err, "--lr is 0.001 there, not 0.1")
    assert run(["train", "text2image", "--out", str(resumed), "--steps", "4", "--resume"] + common, capsys)[0] == 0
    a, b = _weights(straight), _weights(resumed)
    assert not any(".layout." in k for k in a) and "model.conv_in.weight" in a  # a plain UNet by default, keyed as before
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_text2image_needs_a_trained_vae(tmp_path, capsys):
    code, _, err = run(["train", "text2image", "--vae", str(tmp_path / "nothing"), "--out", str(tmp_path / "t")], capsys)
    assert_one_line_error(code, err, "no trained VAE there; run `genlab train vae` first")


def test_text2image_layout_must_be_a_channel_count(tmp_path, capsys):
    code, _, err = run(["train", "text2image", "--layout", "2", "--out", str(tmp_path / "t")], capsys)
    assert_one_line_error(code, err, "--layout must be 0 (none) or at least 4 channels (the first 4 guess the latent picture), got 2")


def test_text2image_layout_warmup_must_not_be_negative(tmp_path, capsys):
    code, _, err = run(["train", "text2image", "--layout", "8", "--layout-warmup", "-1", "--out", str(tmp_path / "t")], capsys)
    assert_one_line_error(code, err, "--layout-warmup must be 0 or more steps, got -1")


def test_layout_warmup_teaches_the_guess_before_the_unet_moves(tmp_path, capsys):
    """The warm-up trains the layout alone on the picture guess: its error on the pool falls,
    and the UNet's weights are untouched until the first real step."""
    from genlab.train.text2image import Text2ImageRun

    vae = tmp_path / "vae"
    assert run(["train", "vae", "--out", str(vae), "--steps", "1"] + VAE, capsys)[0] == 0
    options = {"vae": str(vae), "images": 32, "layout": 8, "layout_warmup": 60, "steps": 1, "batch_size": 16, "lr": 1e-3,
               "seed": 0}
    r = Text2ImageRun.create(tmp_path / "t", options)
    r.prepare()

    def guess_error():
        with torch.no_grad():
            return torch.nn.functional.mse_loss(r.model.layout(r.pool.states.float())[:, :4], r.pool.latents).item()

    unet = {k: v.clone() for k, v in r.model.unet.state_dict().items()}
    before = guess_error()
    r.warm_layout()
    assert guess_error() < 0.7 * before
    assert all(torch.equal(v, r.model.unet.state_dict()[k]) for k, v in unet.items())
    ema = r.trainer.ema.shadow  # the average starts from the warmed layout
    assert all(torch.equal(ema["layout." + k], v) for k, v in r.model.layout.state_dict().items())


@pytest.mark.slow
def test_text2image_layout_resume_is_bit_identical(tmp_path, capsys):
    """A layout run warms its layout once; a resumed run takes it from the checkpoint."""
    vae = tmp_path / "vae"
    assert run(["train", "vae", "--out", str(vae), "--steps", "1"] + VAE, capsys)[0] == 0
    straight, resumed = tmp_path / "a", tmp_path / "b"
    common = ["--vae", str(vae), "--layout", "8", "--layout-warmup", "5"] + T2I
    assert run(["train", "text2image", "--out", str(straight), "--steps", "4"] + common, capsys)[0] == 0
    assert run(["train", "text2image", "--out", str(resumed), "--steps", "2"] + common, capsys)[0] == 0
    code, _, err = run(["train", "text2image", "--out", str(resumed), "--steps", "4", "--resume", "--layout-warmup", "9"]
                       + T2I, capsys)
    assert_one_line_error(code, err, "--layout-warmup is 5 there, not 9")
    assert run(["train", "text2image", "--out", str(resumed), "--steps", "4", "--resume"] + T2I, capsys)[0] == 0
    a, b = _weights(straight), _weights(resumed)
    assert any(k.startswith("model.layout.") for k in a)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
