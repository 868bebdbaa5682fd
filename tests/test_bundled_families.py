"""The small models genlab trained itself and ships for `genlab compare`: each loads offline and does its job."""

import json

import pytest
import torch


def test_gan_draws_the_digit_asked_for_and_varies():
    from genlab.eval.digits import DigitClassifier, accuracy, diversity
    from genlab.data.digits import digits
    from genlab.gan.model import Gan

    gan, clf = Gan.bundled(), DigitClassifier.bundled()
    labels = torch.arange(10).repeat_interleave(20)
    x = gan.generate(labels, seed=0)
    assert accuracy(clf, x, labels) > 0.9
    real = digits(16, "test")
    ratio = diversity(clf.features(x), labels) / diversity(clf.features(real.x), real.labels)
    assert ratio > 0.7, "the bundled generator has collapsed"
    assert len(gan.info["curve"]) > 100 and {"d_loss", "g_loss", "d_real", "d_fake"} <= gan.info["curve"][0].keys()


def test_pixel_gpt_likelihood_is_what_training_reported():
    from genlab.data.digits import digits
    from genlab.autoregressive.pixel_gpt import PixelGpt

    gpt = PixelGpt.bundled()
    held = digits(8, "test")
    assert gpt.bits_per_dim(held.x, held.labels) == pytest.approx(gpt.info["held_out_bits_per_dim"], abs=1e-3)
    assert gpt.info["held_out_bits_per_dim"] < 2.0  # log2(17) = 4.09 bits is knowing nothing


def test_gpt_perplexity_is_what_training_reported():
    from genlab.nn.transformer import load_hf
    from genlab.store import weights_folder
    from genlab.text.generator import TextGenerator
    from genlab.autoregressive.train_lm import perplexity, read_corpus, split

    folder = weights_folder("pydoc-gpt")
    info = json.loads((folder / "genlab-train.json").read_text())
    gen = TextGenerator("pydoc-gpt", dtype="float32")
    held = torch.tensor(gen.tokenizer.encode(split(read_corpus("pydoc"))[1], add_special_tokens=False))
    model = load_hf(folder)
    assert perplexity(model, held, info["options"]["context"]) == pytest.approx(info["held_out_perplexity"], rel=1e-4)
    text = gen.generate("The for statement", raw=True, max_new_tokens=16, seed=0)
    assert text == gen.generate("The for statement", raw=True, max_new_tokens=16, seed=0) and len(text) > 10


def test_masked_diffusion_lm_loads_and_unmasks():
    from genlab.store import weights_folder
    from genlab.diffusion.masked_lm import MASK_GLYPH, DiffusionLm

    dlm = DiffusionLm.load(weights_folder("pydoc-mdlm"))
    text = dlm.generate("The for statement", tokens=24, steps=8, seed=0)
    assert text and MASK_GLYPH not in text
    assert text == dlm.generate("The for statement", tokens=24, steps=8, seed=0)


def test_genlab_text_refuses_the_other_transformer_folders(capsys):
    from genlab.store import weights_folder
    from test_cli import assert_one_line_error, run

    code, _, err = run(["text", "hello", "--model", str(weights_folder("digits-ar"))], capsys)
    assert_one_line_error(code, err, "'digits-ar' is a pixel autoregressive model: it makes images, not text")
