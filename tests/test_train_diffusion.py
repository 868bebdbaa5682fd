"""Training: the loss goes down, checkpoints resume bit for bit, data folders are read or refused clearly."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from genlab.errors import GenlabError
from genlab.data.digits import digits, load_images
from genlab.diffusion.denoiser import DiffusionConfig
from genlab.diffusion.train import DiffusionRun
from genlab.training.options import DiffusionOptions
from test_cli import assert_one_line_error, run

TINY = {"resolution": 8, "widths": (16, 32), "attention_levels": ()}  # a small UNet on the 8x8 digits


def test_digits_splits_and_range():
    train, test = digits(16, "train"), digits(8, "test")
    assert train.x.shape == (1437, 1, 16, 16) and test.x.shape == (360, 1, 8, 8)
    assert train.x.min() >= -1 and train.x.max() <= 1 and train.class_names == [str(i) for i in range(10)]
    assert torch.bincount(train.labels).min() > 130  # every digit is there


def _save(path: Path, size=(8, 8), value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path)


def test_folder_with_class_subfolders(tmp_path):
    _save(tmp_path / "cats" / "a.png", value=10)
    _save(tmp_path / "dogs" / "b.png", value=200)
    _save(tmp_path / "dogs" / "c.jpg", value=100)
    data = load_images(str(tmp_path))
    assert data.class_names == ["cats", "dogs"] and data.labels.tolist() == [0, 1, 1]
    assert data.x.shape == (3, 1, 8, 8)  # grey pictures stay one channel
    assert abs(data.x[0].mean().item() - (10 / 127.5 - 1)) < 1e-6


@pytest.mark.parametrize("setup,fragment", [
    (lambda p: None, "no images in"),
    (lambda p: (p / "x.png").write_bytes(b"junk"), "cannot read image"),
    (lambda p: (_save(p / "a.png", (8, 8)), _save(p / "b.png", (16, 16))), "have 2 different sizes"),
])
def test_bad_folders(tmp_path, setup, fragment):
    setup(tmp_path)
    with pytest.raises(GenlabError, match=fragment):
        load_images(str(tmp_path))


def test_mixed_sizes_are_fine_with_a_resolution(tmp_path):
    _save(tmp_path / "a.png", (8, 8))
    _save(tmp_path / "b.png", (20, 12))
    assert load_images(str(tmp_path), resolution=8).x.shape == (2, 1, 8, 8)


def test_loss_goes_down(tmp_path):
    run_ = DiffusionRun.create(tmp_path, DiffusionOptions(steps=60, batch_size=32, lr=2e-3, warmup=10, **TINY))
    losses = [s.loss for s in run_.steps()]
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:10]) / 10


def test_resume_is_bit_for_bit(tmp_path):
    options = DiffusionOptions(steps=8, batch_size=16, lr=1e-3, warmup=2, **TINY)
    straight = DiffusionRun.create(tmp_path / "a", options)
    for _ in straight.steps():
        pass
    killed = DiffusionRun.create(tmp_path / "b", options)
    for s in killed.steps():
        if s.step == 3:
            killed.save()
            break  # the "kill"
    resumed = DiffusionRun.resume(tmp_path / "b")
    assert resumed.trainer.step == 3
    for _ in resumed.steps():
        pass
    for name, a in straight.model.state_dict().items():
        assert torch.equal(a, resumed.model.state_dict()[name]), name
        assert torch.equal(straight.trainer.ema.shadow[name], resumed.trainer.ema.shadow[name]), name


def test_cli_trains_saves_and_samples(tmp_path, capsys):
    folder = tmp_path / "shapes"
    for i in range(4):
        _save(folder / "dark" / f"{i}.png", value=20 + i)
        _save(folder / "light" / f"{i}.png", value=220 - i)
    out = tmp_path / "run"
    code, _, err = run(["train", "diffusion", "--data", str(folder), "--steps", "4", "--batch-size", "4",
                        "--checkpoint-every", "2", "--sample-every", "4", "--out", str(out)], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]
    assert (out / "samples" / "step-0000004.png").is_file() and (out / "model" / "model.safetensors").is_file()
    code, _, err = run(["image", "light", "--model", str(out), "--steps", "3", "--out", str(tmp_path / "x.png")], capsys)
    assert code == 0, err


@pytest.mark.parametrize("args,fragment", [
    (["--data", "/nonexistent"], "is not a folder"),
    (["--steps", "0"], "--steps must be at least 1, got 0"),
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["--resolution", "2"], "--resolution must be between 4 and 1024, got 2"),
    (["--resume"], "--resume: no checkpoint in"),
    (["--prediction", "x0"], "prediction must be v or eps, got 'x0'"),
    (["--schedule", "sigmoid"], "schedule must be cosine, linear or flow, got 'sigmoid'"),
])
def test_bad_train_input_is_one_line(tmp_path, args, fragment, capsys):
    code, _, err = run(["train", "diffusion", "--out", str(tmp_path / "r")] + args, capsys)
    assert_one_line_error(code, err, fragment)


def test_rectified_flow_trains_and_samples(tmp_path, capsys):
    from genlab.diffusion.schedules import FlowSchedule

    x0, eps, t = torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2), torch.tensor([0.25, 1.0])
    assert torch.equal(FlowSchedule().add_noise(x0, eps, t)[:, 0, 0, 0], torch.tensor([0.75, 0.0]))
    assert DiffusionConfig(schedule="flow").prediction == "flow"
    run_ = DiffusionRun.create(tmp_path, DiffusionOptions(steps=60, batch_size=32, lr=2e-3, warmup=10, schedule="flow", **TINY))
    losses = [s.loss for s in run_.steps()]
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:10]) / 10
    run_.save()
    code, _, err = run(["image", "3", "--model", str(tmp_path), "--steps", "4", "--out", str(tmp_path / "x.png")], capsys)
    assert code == 0 and "4 model calls" in err, err
    code, _, err = run(["image", "3", "--model", str(tmp_path), "--sampler", "ddim"], capsys)
    assert_one_line_error(code, err, "a rectified-flow model samples with euler, heun or reflow, not 'ddim'")


def test_cli_resume_keeps_the_runs_own_total_and_refuses_changes(tmp_path, capsys):
    base = ["train", "diffusion", "--resolution", "8", "--batch-size", "8", "--sample-every", "0", "--out", str(tmp_path / "r")]
    straight = ["train", "diffusion", "--resolution", "8", "--batch-size", "8", "--sample-every", "0", "--out", str(tmp_path / "s")]
    assert run(straight + ["--steps", "6", "--checkpoint-every", "6"], capsys)[0] == 0
    assert run(base + ["--steps", "6", "--checkpoint-every", "3"], capsys)[0] == 0
    import shutil

    shutil.rmtree(tmp_path / "r" / "checkpoints" / "step-0000006")  # as if killed after step 3
    code, _, err = run(["train", "diffusion", "--out", str(tmp_path / "r"), "--resume", "--checkpoint-every", "3",
                        "--sample-every", "0"], capsys)
    assert code == 0 and "at step 3 of 6" in err, err
    a = (tmp_path / "s" / "model" / "model.safetensors").read_bytes()
    assert (tmp_path / "r" / "model" / "model.safetensors").read_bytes() == a
    code, _, err = run(["train", "diffusion", "--out", str(tmp_path / "r"), "--resume", "--lr", "0.1"], capsys)
    assert_one_line_error(code, err, "--resume continues the run as it was saved: --lr is 0.002 there, not 0.1")
    code, _, err = run(["train", "diffusion", "--out", str(tmp_path / "r"), "--resume", "--steps", "5"], capsys)
    assert_one_line_error(code, err, "--steps must be more than the 6 steps already done, got 5")


def test_an_upsampled_model_denoises_small_and_draws_large(tmp_path, capsys):
    """--resolution 8 --upsample 2 (the bundled digits model's options): the UNet works on the digits' native
    8x8, and its pictures are the bilinear 16x16 enlargements that the 16x16 training digits are made with."""
    from genlab import ImageGenerator
    from genlab.image.canvas import from_pil, png_bytes, read_image, to_pil

    out = tmp_path / "run"
    base = ["train", "diffusion", "--resolution", "8", "--batch-size", "8", "--sample-every", "0", "--out", str(out)]
    code, _, err = run(base + ["--upsample", "2", "--steps", "2"], capsys)
    assert code == 0 and "1x8x8" in err, err
    gen = ImageGenerator(str(out))
    assert gen.model.sample_shape == (1, 8, 8) and gen.model.pixel_shape == (1, 16, 16)
    assert torch.equal(gen.model.decode(digits(8, "test").x), digits(16, "test").x)
    [seven] = gen.generate("7", steps=3, seed=0)
    assert seven.size == (16, 16)
    code, _, err = run(["image", "7", "--model", str(out), "--steps", "3", "--seed", "0", "--out", str(tmp_path / "7.png")], capsys)
    assert code == 0 and png_bytes(Image.open(tmp_path / "7.png")) == png_bytes(seven), err

    # inpainting a 16x16 picture: the left half is kept (as the model sees it, its 8x8 average enlarged)
    init, mask = tmp_path / "init.png", tmp_path / "mask.png"
    Image.fromarray((torch.rand(16, 16, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy()).save(init)
    Image.fromarray(torch.cat([torch.zeros(16, 8), torch.full((16, 8), 255.0)], 1).byte().numpy()).save(mask)
    [painted] = gen.generate("7", init_image=str(init), mask=str(mask), steps=5, seed=0)
    [kept] = to_pil(gen.model.decode(gen.model.encode(read_image(init, 16, 1))))
    got, want = from_pil(painted), from_pil(kept)
    assert torch.equal(got[..., :7], want[..., :7])  # output column 7 already blends in sample column 4, repainted
    assert not torch.equal(got[..., 8:], want[..., 8:])

    code, _, err = run(base + ["--upsample", "3", "--steps", "4", "--resume"], capsys)
    assert_one_line_error(code, err, "--upsample is 2 there, not 3")
    code, _, err = run(["train", "diffusion", "--upsample", "0", "--out", str(tmp_path / "r0")], capsys)
    assert_one_line_error(code, err, "upsample must be an integer from 1 to 16, got 0")
