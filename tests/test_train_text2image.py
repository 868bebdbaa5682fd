"""genlab train vae / text2image: the two steps of latent text-to-image, with resume, on the shapes world."""

import json

import pytest
import torch
from safetensors.torch import load_file

from genlab.image.generator import ImageGenerator
from genlab.image.text2image import TextToImage, TextToImageConfig, is_text2image
from genlab.image.text_encoder import TextEncoder
from genlab.train.text2image import BOTH, CrossAttentionRecorder, binding_loss, token_owners
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
    code, _, err = run(["train", "text2image", "--vae", str(vae), "--out", str(t2i), "--steps", "2", "--sample-every", "2",
                        "--binding", "0.5"] + T2I[:4], capsys)
    assert code == 0, err
    assert is_text2image(t2i / "model") and (t2i / "samples" / "step-0000002.png").is_file()
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
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_text2image_with_the_binding_loss_resumes_bit_identical(tmp_path, capsys):
    vae = tmp_path / "vae"
    assert run(["train", "vae", "--out", str(vae), "--steps", "1"] + VAE, capsys)[0] == 0
    straight, resumed, plain = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    common = ["--vae", str(vae)] + T2I
    assert run(["train", "text2image", "--out", str(straight), "--steps", "4", "--binding", "0.5"] + common, capsys)[0] == 0
    assert run(["train", "text2image", "--out", str(plain), "--steps", "4"] + common, capsys)[0] == 0
    assert run(["train", "text2image", "--out", str(resumed), "--steps", "2", "--binding", "0.5"] + common, capsys)[0] == 0
    code, _, err = run(["train", "text2image", "--out", str(resumed), "--steps", "4", "--resume", "--binding", "1"] + common, capsys)
    assert_one_line_error(code, err, "--binding is 0.5 there, not 1")
    assert run(["train", "text2image", "--out", str(resumed), "--steps", "4", "--resume"] + common, capsys)[0] == 0
    a, b, c = _weights(straight), _weights(resumed), _weights(plain)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a if k.startswith("model."))  # the loss changed the training


def test_text2image_needs_a_trained_vae(tmp_path, capsys):
    code, _, err = run(["train", "text2image", "--vae", str(tmp_path / "nothing"), "--out", str(tmp_path / "t")], capsys)
    assert_one_line_error(code, err, "no trained VAE there; run `genlab train vae` first")


def test_text2image_rejects_a_negative_binding_weight(tmp_path, capsys):
    code, _, err = run(["train", "text2image", "--out", str(tmp_path / "t"), "--binding", "-1"], capsys)
    assert_one_line_error(code, err, "--binding must be 0 or more, got -1")


# --- the binding loss ------------------------------------------------------------------------


def test_token_owners_mark_the_words_of_each_object():
    tokenizer = TextEncoder.bundled(32).tokenizer

    def owned(caption, objects):
        tokens = tokenizer.convert_ids_to_tokens(tokenizer(caption, padding="max_length", max_length=32).input_ids)
        owners = token_owners(tokenizer, caption, objects, 32)
        assert owners.shape == (32,) and owners.dtype == torch.int8
        return [(t, int(o)) for t, o in zip(tokens, owners) if o >= 0], int((owners >= 0).sum())

    assert owned("a big blue circle to the left of a red square", 2) == (
        [("big", 0), ("blue", 0), ("circle", 0), ("red", 1), ("square", 1)], 5)
    assert owned("2 purple squares", 2) == ([("purple", BOTH), ("squares", BOTH)], 2)
    assert owned("there is a small green triangle", 1) == ([("small", 0), ("green", 0), ("triangle", 0)], 3)


def test_cross_attention_recorder_is_diffusers_attention_and_keeps_the_maps():
    torch.manual_seed(0)
    unet = TextToImage(TextToImageConfig(), vae=torch.nn.Identity(), encoder=object()).unet
    z, t, states = torch.randn(2, 4, 8, 8), torch.tensor([10, 900]), torch.randn(2, 32, 384)
    reference = unet(z, t, encoder_hidden_states=states).sample
    recorder = CrossAttentionRecorder()
    recorder.install(unet)
    assert torch.allclose(unet(z, t, encoder_hidden_states=states).sample, reference, atol=1e-5)
    # one map per cross-attention layer (3 at 8x8, 4 at 4x4), 4 heads, weights over the 32 tokens
    assert sorted(p.shape for p in recorder.maps) == [(8, 16, 32)] * 4 + [(8, 64, 32)] * 3
    assert all(torch.allclose(p.sum(-1), torch.ones(())) for p in recorder.maps)


def _maps(where: torch.Tensor, tokens=4, heads=2) -> list[torch.Tensor]:
    """Attention maps (B * heads, 64, tokens) where token j attends uniformly over where[b, j] (B, tokens, 8, 8)."""
    a = where.flatten(2).transpose(1, 2)  # (B, 64, tokens)
    a = a / a.sum(1, keepdim=True)  # each token's attention, spread over its cells
    return [a.repeat_interleave(heads, 0)]


def test_binding_loss_is_zero_when_each_word_looks_at_its_object_and_high_when_it_looks_at_the_other():
    left, right = torch.zeros(8, 8), torch.zeros(8, 8)
    left[2:5, 0:3], right[2:5, 5:8] = 1, 1
    object_masks = torch.stack([left, right])[None]  # (1, 2, 8, 8): object 0 on the left, object 1 on the right
    owners = torch.tensor([[-1, 0, 1, BOTH]])
    seen = torch.tensor([True])
    right_place = _maps(torch.stack([torch.ones(8, 8), left, right, left + right])[None])
    swapped = _maps(torch.stack([torch.ones(8, 8), right, left, left + right])[None])
    everywhere = _maps(torch.ones(1, 4, 8, 8))
    assert binding_loss(right_place, object_masks, owners, seen) == pytest.approx(0, abs=1e-6)
    assert binding_loss(swapped, object_masks, owners, seen) == pytest.approx(2 / 3, abs=1e-6)  # 1, 1 and 0
    share = 9 / 64  # uniform attention puts this much on one object, twice that on both
    assert binding_loss(everywhere, object_masks, owners, seen).item() == pytest.approx(
        (2 * (1 - share) ** 2 + (1 - 2 * share) ** 2) / 3, rel=1e-5)
    assert binding_loss(swapped, object_masks, owners, torch.tensor([False])) == 0  # a dropped caption names nothing


def test_binding_loss_pulls_attention_towards_the_object():
    where = torch.zeros(1, 2, 8, 8)
    where[0, 0, :, :4] = 1  # object 0: the left half
    logits = torch.zeros(1, 64, 2, requires_grad=True)  # two tokens; token 1 names object 0
    loss = binding_loss([logits.softmax(-1)], where, torch.tensor([[-1, 0]]), torch.tensor([True]))
    loss.backward()
    grad = logits.grad[0, :, 1].view(8, 8)
    assert (grad[:, :4] < 0).all() and (grad[:, 4:] > 0).all()  # descent raises token 1's weight on the left only
