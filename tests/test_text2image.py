"""Latent text-to-image: the text encoder, the VAE, the model folder, and sampling it.

The model here has random weights and tiny sizes; what is tested is the plumbing and its
parity with diffusers' StableDiffusionPipeline reading the same folder."""

import warnings

import pytest
import torch

from genlab.errors import GenlabError
from genlab.diffusion import autoencoder
from genlab.image.generator import ImageGenerator, ImageRequest
from genlab.registry import kind_of
from genlab.diffusion.text_encoder import TextEncoder

@pytest.fixture(scope="module")
def encoder():
    return TextEncoder.bundled(32)


@pytest.fixture
def tiny_t2i(tiny_t2i_folder):
    return tiny_t2i_folder


def test_text_encoder_pads_masks_and_warns_on_long_prompts(encoder):
    states, mask = encoder(["a red circle", ""])
    assert states.shape == (2, encoder.max_tokens, 384) and mask.shape == (2, encoder.max_tokens)
    assert mask[0].sum() == 5 and mask[1].sum() == 2  # [CLS] a red circle [SEP]; [CLS] [SEP]
    again, _ = encoder(["a red circle"])
    torch.testing.assert_close(again[0], states[0])
    with pytest.warns(UserWarning, match="reads the first 32"):
        long, _ = encoder(["a red circle " * 20])
    assert long.shape == (1, encoder.max_tokens, 384)


def test_text_encoder_matches_sentence_transformers_pooling(encoder):
    """Mean-pooling MiniLM's token states gives the published sentence embedding: similar
    sentences land close, unrelated ones far."""
    def embed(texts):
        states, mask = encoder(texts)
        pooled = (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return torch.nn.functional.normalize(pooled, dim=-1)

    a, b, c = embed(["a red circle above a blue square", "a blue square below a red circle", "the stock market fell today"])
    assert (a @ b) > 0.8 and (a @ c) < 0.3


def test_vae_shrinks_each_side_by_four():
    torch.manual_seed(0)
    vae = autoencoder.build_vae(widths=(16, 16, 16)).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    z = autoencoder.encode(vae, x)
    assert z.shape == (2, 4, 8, 8)
    assert autoencoder.decode(vae, z).shape == (2, 3, 32, 32)
    loss = autoencoder.vae_loss(vae.train(), x, torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.item() > 0 and all(p.grad is not None for p in vae.encoder.parameters())


def test_folder_is_recognised_and_generates_reproducibly(tiny_t2i):
    assert kind_of(tiny_t2i).name == "text2image"
    gen = ImageGenerator(str(tiny_t2i))
    a = gen.generate("a red circle", steps=3, seed=1, n=2)
    b = gen.generate("a red circle", steps=3, seed=1, n=2)
    c = gen.generate("a blue square", steps=3, seed=1, n=2)
    assert a[0].size == (32, 32) and a[0].mode == "RGB" and len(a) == 2
    assert a[0].tobytes() == b[0].tobytes() and a[0].tobytes() != c[0].tobytes()
    assert a[0].tobytes() != a[1].tobytes()


def _with_config(folder, tmp_path, **changes):
    """A copy of the model folder with `changes` in its genlab.json."""
    import json
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(folder, copy)
    config = copy / "genlab.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | changes))
    return copy


def test_the_folder_names_its_default_sampler_and_steps(tiny_t2i, tmp_path, capsys):
    """genlab.json's sampler and sampling_steps are what a request that leaves them open gets,
    from the Python API and the CLI alike; an unknown sampler there is a one-line error."""
    from genlab.image.canvas import png_bytes
    from test_cli import run

    folder = _with_config(tiny_t2i, tmp_path, sampler="euler", sampling_steps=4)
    gen = ImageGenerator(str(folder))
    result = gen.run(ImageRequest("a red circle", seed=3))
    assert result.model_calls == 4
    assert png_bytes(result.images[0]) == png_bytes(gen.generate("a red circle", sampler="euler", steps=4, seed=3)[0])
    assert png_bytes(result.images[0]) != png_bytes(gen.generate("a red circle", sampler="dpmpp", steps=4, seed=3)[0])
    code, _, err = run(["image", "a red circle", "--model", str(folder), "--seed", "3", "--out", str(tmp_path / "a.png")], capsys)
    assert code == 0, err
    assert (tmp_path / "a.png").read_bytes() == png_bytes(result.images[0]) and "4 model calls" in err
    with pytest.raises(GenlabError, match="unknown sampler 'plms'; choose one of: ddpm, ddim"):
        ImageGenerator(str(_with_config(tiny_t2i, tmp_path / "bad", sampler="plms")))


@pytest.mark.parametrize("prompt", ["", "   "])
def test_empty_prompt_is_a_clear_error(tiny_t2i, prompt):
    with pytest.raises(GenlabError, match="the prompt is empty"):
        ImageGenerator(str(tiny_t2i)).generate(prompt, steps=2)


def test_a_prompt_naming_nothing_drawable_is_refused_not_drawn_black(tiny_t2i, capsys):
    from test_cli import assert_one_line_error, run

    code, _, err = run(["image", "a cat sitting on a sofa", "--out", "never.png"], capsys)  # the bundled shapes model
    assert_one_line_error(code, err, "'a cat sitting on a sofa' names nothing this text-to-image model can draw: it knows "
                                     "circles, squares and triangles in red, orange, yellow, green, blue, purple")
    assert "genlab imagine" in err and "diffusers pipeline folder" in err
    gen = ImageGenerator(str(tiny_t2i))
    with pytest.raises(GenlabError, match="names nothing this text-to-image model can draw"):
        gen.generate("a Cat", steps=2)
    [img] = gen.generate("Two RED squares", steps=2, negative_prompt="blurry, dark")  # a negative need name nothing
    assert img.size == (32, 32)


def test_every_sampler_img2img_and_inpainting_run_in_latent_space(tiny_t2i, tmp_path):
    from PIL import Image

    gen = ImageGenerator(str(tiny_t2i))
    for sampler in ("ddpm", "ddim", "dpmpp", "dpmpp-sde", "euler", "heun"):
        [img] = gen.generate("two green triangles", sampler=sampler, steps=3, seed=0, negative_prompt="a red square")
        assert img.size == (32, 32)
    init, mask = tmp_path / "init.png", tmp_path / "mask.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(init)
    m = Image.new("L", (32, 32), 0)
    m.paste(255, (0, 0, 16, 32))  # repaint the left half
    m.save(mask)
    [kept] = gen.generate("a blue circle", steps=4, seed=0, init_image=str(init), strength=0.0)
    [painted] = gen.generate("a blue circle", steps=4, seed=0, init_image=str(init), mask=str(mask), strength=1.0)
    assert kept.size == painted.size == (32, 32)


@pytest.fixture(scope="module")
def tiny_layout_t2i(tmp_path_factory):
    from conftest import build_tiny_text2image

    return build_tiny_text2image(tmp_path_factory.mktemp("t2i") / "layout", layout=3)


def test_prompt_layout_is_saved_loaded_and_read_by_the_unet(tiny_layout_t2i):
    """The layout's map: one answer per latent position, different for different prompts; it
    is saved with the folder, loads back bit for bit, and the UNet's output depends on it."""
    from genlab.diffusion.text2image import load_text2image

    model = load_text2image(tiny_layout_t2i)
    assert model.unet.config.in_channels == 4 + 3 and (tiny_layout_t2i / "layout" / "model.safetensors").is_file()
    states = torch.cat([model.condition(p, 1)["states"] for p in ("a red circle to the left of a blue square",
                                                                    "a blue square to the left of a red circle")])
    maps = model.layout(states)
    assert maps.shape == (2, 3, 8, 8)
    assert not torch.allclose(maps[0], maps[1]) and not torch.allclose(maps[0, :, 0, 0], maps[0, :, 7, 7])
    zt, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([500, 500])
    out = model(zt, t, states)
    with torch.no_grad():
        model.layout.to_map.weight.zero_()
        model.layout.to_map.bias.zero_()
    assert not torch.allclose(out, model(zt, t, states))  # the map reaches the UNet
    again = load_text2image(tiny_layout_t2i)
    torch.testing.assert_close(again(zt, t, states), out, rtol=0, atol=0)
    a = ImageGenerator(str(tiny_layout_t2i)).generate("a red circle", steps=3, seed=1)[0]
    assert a.tobytes() == ImageGenerator(str(tiny_layout_t2i)).generate("a red circle", steps=3, seed=1)[0].tobytes()


def test_semantic_layout_gives_the_unet_one_distribution_per_class_group(tmp_path):
    """A layout with class groups: the UNet reads the free channels and, per group, probabilities
    that sum to 1 at every position; the folder loads back bit for bit."""
    from conftest import build_tiny_text2image

    from genlab.diffusion.text2image import load_text2image

    folder = build_tiny_text2image(tmp_path / "semantic", layout=4, classes=(7, 4, 3))
    model = load_text2image(folder)
    assert model.config.layout_classes == (7, 4, 3) and model.unet.config.in_channels == 4 + 4 + 14
    states = model.condition("a red circle to the left of a blue square", 2)["states"]
    raw = model.layout(states)
    seen = model.layout.unet_input(raw)
    assert raw.shape == seen.shape == (2, 4 + 14, 8, 8)
    torch.testing.assert_close(seen[:, :4], raw[:, :4], rtol=0, atol=0)
    for group in seen[:, 4:].split((7, 4, 3), dim=1):
        assert (group >= 0).all()
        torch.testing.assert_close(group.sum(1), torch.ones(2, 8, 8))
    zt, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([500, 500])
    torch.testing.assert_close(load_text2image(folder)(zt, t, states), model(zt, t, states), rtol=0, atol=0)


def test_a_damaged_layout_file_is_a_clear_error(tiny_layout_t2i, tmp_path):
    import shutil

    from genlab.diffusion.text2image import load_text2image

    broken = tmp_path / "broken"
    shutil.copytree(tiny_layout_t2i, broken)
    (broken / "layout" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(GenlabError, match=f"cannot load the text-to-image model in {broken}"):
        load_text2image(broken)
    (broken / "layout" / "model.safetensors").unlink()
    with pytest.raises(GenlabError, match="cannot load the text-to-image model"):
        load_text2image(broken)


def test_sampling_matches_diffusers_stable_diffusion_pipeline(tiny_t2i, encoder):
    """The folder is a Stable Diffusion folder: diffusers' own pipeline, given MiniLM as the
    text encoder, draws the same picture from the same noise as genlab's sampler."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    gen = ImageGenerator(str(tiny_t2i))
    request = dict(steps=5, seed=7, sampler="ddim", guidance=3.0)
    noise = torch.randn((1, *gen.model.sample_shape), generator=torch.Generator().manual_seed(7))
    ours = [step.xt for step in gen.stream(ImageRequest("a red circle", **request))][-1]
    encoder.model.config.use_attention_mask = True  # the pipeline then passes the padding mask, as genlab does
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = StableDiffusionPipeline.from_pretrained(tiny_t2i, text_encoder=encoder.model, safety_checker=None,
                                                       feature_extractor=None, requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    theirs = pipe("a red circle", num_inference_steps=5, guidance_scale=3.0, latents=noise, output_type="latent").images
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("prompt,model", [("a handwritten 7", "digits"), ("seven", "digits"), ("7", "digits"),
                                          ("two red circles", "shapes"), ("a red circle to the left of a blue square", "shapes"),
                                          ("a cat", "shapes")])
def test_genlab_image_picks_the_bundled_model_from_the_prompt(prompt, model):
    from genlab.image.generator import pick_model

    assert pick_model(prompt) == model


def test_bundled_shapes_model_draws_what_it_is_asked(tmp_path):
    """The bundled model through the checker: single coloured shapes come out right (the
    full adherence figures are in docs/benchmarks.md, from benchmarks/prompt_adherence.py)."""
    from genlab.eval.shapes import detect, satisfies
    from genlab.data.shapes import parse

    gen = ImageGenerator("shapes")
    prompts = ["a red circle", "a blue square", "a yellow triangle", "a green circle", "a purple square", "an orange triangle"]
    ok = [satisfies(detect(img), parse(p))[0] for p in prompts for img in gen.generate(p, n=4, seed=0)]
    assert sum(ok) >= 0.8 * len(ok), ok
