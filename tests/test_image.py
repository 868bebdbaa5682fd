"""Image generation end to end on a tiny model: prompts, guidance, img2img, inpainting,
seeds, the `genlab image` command and its errors."""

import pytest
import torch
from PIL import Image

from genlab import ImageGenerator
from genlab.errors import GenlabError
from genlab.image.canvas import png_bytes, read_image
from genlab.image.generator import ImageRequest, guided, parse_prompt
from test_cli import assert_one_line_error, run

DIGITS = [str(i) for i in range(10)]


def pixels(im) -> tuple:
    """What a picture shows (mode, size, pixel bytes): its PNG file also carries a receipt (receipts.py)."""
    return im.mode, im.size, im.tobytes()


@pytest.mark.parametrize("prompt,expected", [("7", 7), ("seven", 7), ("a handwritten 7", 7), ("Draw a ZERO!", 0), ("digit 9 please", 9)])
def test_prompts_name_a_digit(prompt, expected):
    assert parse_prompt(prompt, DIGITS) == expected


@pytest.mark.parametrize("prompt,fragment", [("a cat", "names none of them"), ("7 or 8", "names several")])
def test_bad_prompts_list_what_is_accepted(prompt, fragment):
    with pytest.raises(GenlabError, match=fragment) as e:
        parse_prompt(prompt, DIGITS)
    assert "this model draws one of: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9" in str(e.value)


def test_prompts_for_folder_classes():
    assert parse_prompt("a golden retriever", ["cat", "golden retriever"]) == 1
    assert parse_prompt("Cat", ["cat", "golden retriever"]) == 0
    assert parse_prompt("golden_retriever", ["cat", "golden_retriever"]) == 1
    with pytest.raises(GenlabError, match="names none of them"):
        parse_prompt("a catapult", ["cat", "dog"])


def test_same_seed_same_pixels(tiny_diffusion):
    gen = ImageGenerator(str(tiny_diffusion))
    a = gen.generate("1", steps=5, seed=3, n=2)
    b = ImageGenerator(str(tiny_diffusion)).generate("1", steps=5, seed=3, n=2)
    c = gen.generate("1", steps=5, seed=4, n=2)
    assert [pixels(i) for i in a] == [pixels(i) for i in b]
    assert pixels(a[0]) != pixels(c[0])
    assert a[0].size == (8, 8) and a[0].mode == "L" and len(a) == 2


def test_guidance_mixes_conditional_and_unconditional(tiny_diffusion):
    model = ImageGenerator(str(tiny_diffusion)).model
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([500.0, 500.0])
    labels, null = torch.tensor([1, 2]), torch.tensor([3, 3])  # 3 classes: index 3 is "no class"
    cond, uncond = model(x, t, labels), model(x, t, null)
    assert model.null_condition(2)["labels"].tolist() == null.tolist()
    assert model.condition("a 2", 2)["labels"].tolist() == [2, 2]
    c, u = {"labels": labels}, {"labels": null}
    torch.testing.assert_close(guided(model, c, u, 1.0)(x, t), cond)
    torch.testing.assert_close(guided(model, c, u, 0.0)(x, t), uncond)
    torch.testing.assert_close(guided(model, c, u, 4.0)(x, t), uncond + 4 * (cond - uncond), atol=1e-5, rtol=1e-5)
    negative = torch.tensor([0, 0])
    torch.testing.assert_close(guided(model, c, {"labels": negative}, 2.0)(x, t),
                               model(x, t, negative) + 2 * (cond - model(x, t, negative)), atol=1e-5, rtol=1e-5)


def _picture(path, size=8, value=None):
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (size, size), generator=g, dtype=torch.uint8) if value is None else torch.full((size, size), value, dtype=torch.uint8)
    Image.frombytes("L", (size, size), pixels.numpy().tobytes()).save(path)
    return path


def test_img2img_strength_zero_returns_the_init_image(tiny_diffusion, tmp_path):
    init = _picture(tmp_path / "init.png")
    gen = ImageGenerator(str(tiny_diffusion))
    [same] = gen.generate("2", init_image=str(init), strength=0.0, seed=0)
    assert pixels(same) == pixels(Image.open(init).convert("L"))
    [changed] = gen.generate("2", init_image=str(init), strength=0.6, steps=10, seed=0)
    assert pixels(changed) != pixels(same)


def test_inpainting_keeps_the_black_part_of_the_mask(tiny_diffusion, tmp_path):
    init = _picture(tmp_path / "init.png")
    mask = torch.zeros(8, 8, dtype=torch.uint8)
    mask[:, 4:] = 255  # repaint the right half
    Image.frombytes("L", (8, 8), mask.numpy().tobytes()).save(tmp_path / "mask.png")
    want = read_image(init, 8, 1)
    for sampler in ("ddpm", "ddim", "dpmpp", "euler", "heun"):
        for strength, n in ((1.0, 1), (0.6, 2)):
            outs = ImageGenerator(str(tiny_diffusion)).generate("0", init_image=str(init), mask=str(tmp_path / "mask.png"),
                                                                strength=strength, steps=8, seed=0, sampler=sampler, n=n)
            assert len(outs) == n
            for out in outs:
                got = read_image_tensor(out)
                assert torch.equal(got[..., :4], want[..., :4]), sampler  # kept exactly
                assert not torch.equal(got[..., 4:], want[..., 4:]), sampler  # redrawn


def read_image_tensor(im):
    from genlab.image.canvas import from_pil

    return from_pil(im)


def test_trajectory_goes_from_noise_to_the_image(tiny_diffusion):
    from genlab.image.canvas import to_pil

    result = ImageGenerator(str(tiny_diffusion)).run(ImageRequest("1", steps=12, seed=0, trajectory_frames=4))
    assert len(result.trajectory) == 4
    noise = torch.randn((1, 1, 8, 8), generator=torch.Generator().manual_seed(0))  # what seed 0 starts from
    assert pixels(result.trajectory[0]) == pixels(to_pil(noise)[0])
    assert pixels(result.trajectory[-1]) == pixels(result.images[0])
    assert result.model_calls == 12


def test_cli_and_api_give_the_same_png(tiny_diffusion, tmp_path, capsys):
    code, _, err = run(["image", "2", "--model", str(tiny_diffusion), "--steps", "6", "--seed", "11",
                        "--out", str(tmp_path / "a.png"), "--trajectory", str(tmp_path / "t.png"), "--frames", "3"], capsys)
    assert code == 0, err
    [api] = ImageGenerator(str(tiny_diffusion)).generate("2", steps=6, seed=11)
    assert (tmp_path / "a.png").read_bytes() == png_bytes(api)  # receipt included
    assert Image.open(tmp_path / "t.png").size == (3 * 8 + 2, 8)
    assert "6 model calls" in err and "seed 11" in err


@pytest.mark.parametrize("extra,fragment", [
    (["--steps", "0"], "--steps must be an integer of at least 1, got 0"),
    (["--guidance", "-1"], "--guidance must be a finite number between 0 and 100, got -1.0"),
    (["-n", "0"], "-n must be an integer between 1 and 64, got 0"),
    (["--strength", "1.5", "--init-image", "x.png"], "--strength must be a finite number between 0 and 1, got 1.5"),
    (["--sampler", "plms"], "unknown sampler 'plms'; choose one of: ddpm, ddim, dpmpp, dpmpp-sde, euler, heun"),
    (["--init-image", "/nonexistent.png"], "cannot read --init-image '/nonexistent.png'"),
    (["--model", "/nonexistent-folder"], "there is no such folder or file"),
    (["--out", "x.jpg"], "--out must end in .png"),
    (["--steps", "abc"], "Invalid value for '--steps'"),
    (["--trajectory", "strip.gif"], "--trajectory must end in .png"),
    (["--scale", "0"], "--scale must be between 1 and 64, got 0"),
    (["--seed", str(2**64)], "--seed must be between 0 and 2^63 - 1"),
    (["--dtype", "int8"], "--dtype must be auto, float32, float16 or bfloat16, got 'int8'"),
    (["--device", "tpu"], "device"),
])
def test_bad_image_input_is_one_line(tiny_diffusion, extra, fragment, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["image", "1", "--model", str(tiny_diffusion)] + extra
    code, _, err = run(args, capsys)
    assert_one_line_error(code, err, fragment)


def test_unwritable_out_and_broken_model_folders_are_one_line(tiny_diffusion, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, _, err = run(["image", "1", "--model", str(tiny_diffusion), "--steps", "2", "--out", str(tmp_path / "file" / "x.png")], capsys)
    assert_one_line_error(code, err, "cannot write --out")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "genlab.json").write_text("{not json")
    assert_one_line_error(*run(["image", "1", "--model", str(broken)], capsys)[::2], "genlab.json is not valid JSON")
    (broken / "genlab.json").write_text('{"resolution": 8, "colour": "blue"}')
    assert_one_line_error(*run(["image", "1", "--model", str(broken)], capsys)[::2], "unknown keys in genlab.json: colour")
    (broken / "genlab.json").write_text('{"resolution": 8}')
    assert_one_line_error(*run(["image", "1", "--model", str(broken)], capsys)[::2], "cannot load weights from")


def test_bad_mask_and_prompt_are_one_line(tiny_diffusion, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    init, small = _picture(tmp_path / "init.png", 8), _picture(tmp_path / "small.png", 4)
    (tmp_path / "junk.png").write_bytes(b"not a png")
    base = ["image", "1", "--model", str(tiny_diffusion), "--init-image", str(init)]
    assert_one_line_error(*run(base + ["--mask", str(small)], capsys)[::2], "--mask is 4x4 but --init-image is 8x8; they must match")
    assert_one_line_error(*run(base + ["--mask", str(tmp_path / "junk.png")], capsys)[::2], "cannot read --mask")
    assert_one_line_error(*run(["image", "a cat", "--model", str(tiny_diffusion)], capsys)[::2], "this model draws one of: 0, 1, 2")


def test_unet_dtype_shortcut_follows_casts(tiny_diffusion):
    from genlab.diffusion.denoiser import load_model

    model = load_model(tiny_diffusion)
    assert model.unet.dtype == torch.float32
    model.to(torch.bfloat16)
    assert model.unet.dtype == torch.bfloat16 == next(model.parameters()).dtype
    x = torch.randn(1, 1, 8, 8, dtype=torch.bfloat16)
    assert model(x, torch.tensor([10.0]), torch.tensor([1])).dtype == torch.bfloat16
