"""`--model FOLDER` with a diffusers pipeline: a tiny Stable Diffusion built from random weights here."""

import json

import pytest
import torch

from genlab import ImageGenerator
from genlab.image.canvas import png_bytes
from test_cli import assert_one_line_error, run

diffusers = pytest.importorskip("diffusers")


def pixels(im) -> tuple:
    """What a picture shows (mode, size, pixel bytes): its PNG file also carries a receipt (receipts.py)."""
    return im.mode, im.size, im.tobytes()


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = tmp_path_factory.mktemp("sd")
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=32, attention_head_dim=8)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
                                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                                  norm_num_groups=32)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=600, hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                                num_hidden_layers=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1))
    # a byte-level CLIP vocabulary with no merges: every character is a token
    chars = byte_alphabet()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1} | {c: i + 2 for i, c in enumerate(chars)}
    vocab |= {c + "</w>": i + 2 + len(chars) for i, c in enumerate(chars)}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    scheduler = diffusers.PNDMScheduler(skip_prk_steps=True)
    pipe = diffusers.StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                             scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    pipe.save_pretrained(folder / "pipe")
    return folder / "pipe"


def test_pipeline_folder_matches_calling_diffusers_directly(tiny_sd):
    gen = ImageGenerator(str(tiny_sd))
    [ours] = gen.generate("a red square", steps=4, seed=5, guidance=5.0, sampler="euler")
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(tiny_sd), local_files_only=True)
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    [theirs] = pipe("a red square", num_inference_steps=4, guidance_scale=5.0, generator=torch.Generator().manual_seed(5)).images
    assert ours.size == (16, 16) and pixels(ours) == pixels(theirs)


def test_pipeline_img2img_inpaint_trajectory_and_cli(tiny_sd, tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (16, 16), (200, 30, 30)).save(tmp_path / "init.png")
    Image.new("L", (16, 16), 255).save(tmp_path / "mask.png")
    gen = ImageGenerator(str(tiny_sd))
    [a] = gen.generate("a cat", init_image=str(tmp_path / "init.png"), strength=0.5, steps=4, seed=1, sampler="ddim")
    img2img = diffusers.AutoPipelineForImage2Image.from_pretrained(str(tiny_sd), local_files_only=True)
    img2img.scheduler = diffusers.DDIMScheduler.from_config(img2img.scheduler.config)
    img2img.set_progress_bar_config(disable=True)
    [want] = img2img("a cat", image=Image.open(tmp_path / "init.png"), strength=0.5, num_inference_steps=4,
                     generator=torch.Generator().manual_seed(1)).images  # diffusers' default guidance, 7.5, as genlab's for a pipeline
    assert pixels(a) == pixels(want)
    [text_only] = gen.generate("a cat", steps=4, seed=1, sampler="ddim")
    assert pixels(a) != pixels(text_only)
    [b] = gen.generate("a cat", init_image=str(tmp_path / "init.png"), mask=str(tmp_path / "mask.png"), steps=4, seed=1)
    assert b.size == (16, 16) and pixels(b) != pixels(a)
    code, _, err = run(["image", "a cat", "--model", str(tiny_sd), "--steps", "4", "--seed", "2", "--sampler", "dpmpp",
                        "--out", str(tmp_path / "x.png"), "--trajectory", str(tmp_path / "t.png"), "--frames", "2"], capsys)
    assert code == 0, err
    assert (tmp_path / "x.png").read_bytes() == png_bytes(gen.generate("a cat", steps=4, seed=2, sampler="dpmpp")[0])  # receipt included
    assert Image.open(tmp_path / "t.png").size == (2 * 16 + 1, 16)  # 2 frames of 16 px with a 1 px gap


def test_a_pipeline_refuses_the_reflow_sampler_before_loading(tiny_sd, capsys):
    code, _, err = run(["image", "a cat", "--model", str(tiny_sd), "--sampler", "reflow"], capsys)
    assert_one_line_error(code, err, "a diffusers pipeline samples with ddpm, ddim, dpmpp, dpmpp-sde, euler, heun, not 'reflow'")


def byte_alphabet():
    """GPT-2's printable stand-ins for the 256 byte values, which CLIP's BPE also uses."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    extra = [b for b in range(256) if b not in keep]
    return [chr(b) for b in keep] + [chr(256 + i) for i in range(len(extra))]

