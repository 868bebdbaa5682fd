"""`genlab train lm`: a small GPT from scratch on Python's own docs, with its own BPE tokenizer."""

import shutil

import torch

from test_cli import assert_one_line_error, run

TINY = ["train", "lm", "--vocab-size", "400", "--context", "32", "--width", "64", "--layers", "2", "--heads", "2",
        "--batch-size", "8", "--lr", "1e-2", "--sample-every", "0"]


def test_trains_resumes_bit_for_bit_and_decodes_with_genlab_text(tmp_path, capsys):
    from safetensors.torch import load_file

    from genlab.text.generator import TextGenerator

    code, _, err = run(TINY + ["--steps", "40", "--checkpoint-every", "20", "--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    perplexity = float(err.split("held-out perplexity ")[1].split(";")[0])
    assert perplexity < 400 * 0.5  # far better than guessing among 400 tokens
    run(TINY + ["--steps", "40", "--checkpoint-every", "20", "--out", str(tmp_path / "b")], capsys)
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-0000040")  # as if killed after step 20
    code, _, err = run(["train", "lm", "--resume", "--checkpoint-every", "20", "--sample-every", "0",
                        "--out", str(tmp_path / "b")], capsys)
    assert code == 0 and "resuming at step 20 of 40" in err, err
    a, b = (load_file(str(tmp_path / r / "model" / "model.safetensors")) for r in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    gen = TextGenerator(str(tmp_path / "a" / "model"), dtype="float32")
    text = gen.generate("The for statement", raw=True, max_new_tokens=12, seed=0)
    assert text and text == gen.generate("The for statement", raw=True, max_new_tokens=12, seed=0)


def test_bad_input(tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("too short")
    code, _, err = run(TINY + ["--data", str(short), "--out", str(tmp_path / "r")], capsys)
    assert_one_line_error(code, err, "give at least 1000")
    code, _, err = run(TINY + ["--data", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "r")], capsys)
    assert_one_line_error(code, err, "--data must be 'pydoc' or a text file")
    code, _, err = run(TINY + ["--heads", "0", "--out", str(tmp_path / "r")], capsys)
    assert_one_line_error(code, err, "--layers and --heads must be at least 1")
    code, _, err = run(TINY + ["--width", "65", "--out", str(tmp_path / "r")], capsys)
    assert_one_line_error(code, err, "--width 65 must be a multiple of --heads 2")
