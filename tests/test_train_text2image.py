"""genlab train vae / text2image: the two steps of latent text-to-image, with resume, on the shapes world."""

import json

import pytest
import torch
from safetensors.torch import load_file

from genlab.image.generator import ImageGenerator
from genlab.registry import kind_of
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
    assert kind_of(t2i / "model").name == "text2image" and (t2i / "samples" / "step-0000002.png").is_file()
    assert (t2i / "model" / "layout" / "model.safetensors").is_file()
    assert json.loads((t2i / "model" / "genlab.json").read_text())["layout_classes"] == [7, 4, 3]  # semantic by default
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
    common = ["--vae", str(vae), "--layout", "0"] + T2I
    assert run(["train", "text2image", "--out", str(straight), "--steps", "4"] + common, capsys)[0] == 0
    assert run(["train", "text2image", "--out", str(resumed), "--steps", "2"] + common, capsys)[0] == 0
    code, _, err = run(["train", "text2image", "--out", str(resumed), "--steps", "4", "--resume", "--lr", "0.1"] + common, capsys)
    assert_one_line_error(code, err, "--lr is 0.001 there, not 0.1")
    assert run(["train", "text2image", "--out", str(resumed), "--steps", "4", "--resume"] + common, capsys)[0] == 0
    a, b = _weights(straight), _weights(resumed)
    assert not any(".layout." in k for k in a) and "model.conv_in.weight" in a  # --layout 0: a plain UNet, keyed as before
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


def _layout_run(tmp_path, capsys, layout: int, classes: bool):
    """A new layout run (60 warm-up steps) on a one-step VAE, its pool of 32 pictures encoded."""
    from genlab.training.options import Text2ImageOptions
    from genlab.diffusion.train_text2image import Text2ImageRun

    vae = tmp_path / "vae"
    assert run(["train", "vae", "--out", str(vae), "--steps", "1"] + VAE, capsys)[0] == 0
    options = Text2ImageOptions(vae=str(vae), images=32, layout=layout, layout_warmup=60, layout_classes=classes, steps=1,
                                batch_size=16, lr=1e-3, seed=0)
    r = Text2ImageRun.create(tmp_path / "t", options)
    r.prepare()
    return r


def test_layout_warmup_teaches_the_guess_before_the_unet_moves(tmp_path, capsys):
    """The warm-up trains the layout alone on the picture guess: its error on the pool falls,
    and the UNet's weights are untouched until the first real step."""
    r = _layout_run(tmp_path, capsys, layout=8, classes=False)

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


def test_class_maps_say_what_covers_each_latent_position():
    """Each group is a distribution per cell; the cell under an object's centre is mostly that
    object's colour, shape and size, and a corner far from every object is "nothing"."""
    from genlab.data.shapes import ShapesWorld
    from genlab.diffusion.train_text2image import LAYOUT_CLASSES, class_maps

    world = ShapesWorld("train", 0)
    for i in range(50):
        scene, caption = world.example(i)
        maps = class_maps(scene, 8)
        groups = dict(zip(LAYOUT_CLASSES, maps.split([len(v) for v in LAYOUT_CLASSES.values()])))
        for g in groups.values():
            torch.testing.assert_close(g.sum(0), torch.ones(8, 8))
        for o in scene.objects:
            cy, cx = int(o.y // 4), int(o.x // 4)
            for attr, names in LAYOUT_CLASSES.items():
                assert names[int(groups[attr][:, cy, cx].argmax())] == getattr(o, attr), caption
        far = [(y, x) for y in (0, 7) for x in (0, 7) if all(abs(o.y - (4 * y + 2)) > 12 or abs(o.x - (4 * x + 2)) > 12
                                                              for o in scene.objects)]
        for y, x in far:
            assert groups["shape"][0, y, x] == 1.0, caption


def test_semantic_layout_warmup_teaches_the_class_maps(tmp_path, capsys):
    """With --layout-classes the pool carries the class maps and the warm-up lowers the layout's
    cross-entropy against them."""
    from genlab.diffusion.train_text2image import layout_loss

    r = _layout_run(tmp_path, capsys, layout=4, classes=True)
    assert r.pool.classes.shape == (32, 14, 8, 8) and r.model.unet.config.in_channels == 4 + 4 + 14

    def class_error():
        with torch.no_grad():
            layout = r.model.layout
            raw = layout(r.pool.states.float())
            return (layout_loss(layout, raw, r.pool.latents, r.pool.classes)
                    - layout_loss(layout, raw, r.pool.latents, None)).item()

    before = class_error()
    r.warm_layout()
    assert class_error() < 0.7 * before


def test_layout_classes_need_a_layout_and_stay_on_resume(tmp_path, capsys):
    code, _, err = run(["train", "text2image", "--layout", "0", "--layout-classes", "--out", str(tmp_path / "t")], capsys)
    assert_one_line_error(code, err, "--layout-classes needs a layout: drop --layout 0, or give it 4 channels or more")
    vae, out = tmp_path / "vae", tmp_path / "semantic"
    assert run(["train", "vae", "--out", str(vae), "--steps", "1"] + VAE, capsys)[0] == 0
    assert run(["train", "text2image", "--vae", str(vae), "--out", str(out), "--steps", "2", "--layout", "4",
                "--layout-classes", "--layout-warmup", "2"] + T2I, capsys)[0] == 0
    assert json.loads((out / "model" / "genlab.json").read_text())["layout_classes"] == [7, 4, 3]
    code, _, err = run(["train", "text2image", "--out", str(out), "--steps", "3", "--resume", "--no-layout-classes"] + T2I,
                       capsys)
    assert_one_line_error(code, err, "--layout-classes is True there, not False")


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
