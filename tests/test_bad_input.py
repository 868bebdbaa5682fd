"""Issue 24: bad input and unwritable outputs on the command line are one line and exit 2, found before the work."""

import shutil
import subprocess
import re
import sys

import pytest
from PIL import Image

from genlab.errors import GenlabError, check_number
from genlab.image.canvas import save_pngs
from genlab.image.generator import ImageRequest
from genlab.autoregressive.sampling import SamplingParams
from test_cli import assert_one_line_error, run


@pytest.fixture
def torn_text_model(tiny_model, tmp_path):
    """The tiny text model with its weights cut in half, as an interrupted copy leaves them."""
    folder = tmp_path / "torn-text"
    shutil.copytree(tiny_model, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return folder


@pytest.fixture
def torn_diffusion(tiny_diffusion, tmp_path):
    folder = tmp_path / "torn-diffusion"
    shutil.copytree(tiny_diffusion, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return folder


# -- 1 and 6: outputs are checked before the work, and an error leaves none behind ------------------

def test_image_outputs_are_checked_before_the_model_loads(torn_diffusion, tmp_path, capsys):
    """The model's weights are torn: an --out error reported instead proves the check came first."""
    (tmp_path / "file").write_text("x")
    base = ["image", "1", "--model", str(torn_diffusion), "--steps", "2"]
    code, _, err = run(base + ["--out", str(tmp_path / "file" / "a.png")], capsys)
    assert_one_line_error(code, err, f"cannot write --out '{tmp_path / 'file' / 'a.png'}': '{tmp_path / 'file'}' is a file")
    (tmp_path / "dir.png").mkdir()  # a folder named like a picture
    code, _, err = run(base + ["--out", str(tmp_path / "dir.png")], capsys)
    assert_one_line_error(code, err, "it is a folder; give the path of a file")


def test_unwritable_trajectory_leaves_no_picture(tiny_diffusion, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "new" / "a.png"
    code, _, err = run(["image", "1", "--model", str(tiny_diffusion), "--steps", "2", "--out", str(out),
                        "--trajectory", str(tmp_path / "file" / "t.png")], capsys)
    assert_one_line_error(code, err, "cannot write --trajectory")
    assert not out.exists() and not out.parent.exists()


def test_save_pngs_writes_all_or_none(tmp_path):
    """Even when the place breaks after the checks, a failed second picture takes the first one with it."""
    (tmp_path / "file").write_text("x")
    im = Image.new("L", (4, 4), 128)
    out = tmp_path / "a.png"
    with pytest.raises(GenlabError, match="cannot write --trajectory"):
        save_pngs([(im, out, "--out"), (im, tmp_path / "file" / "t.png", "--trajectory")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # no picture, no temporary file
    save_pngs([(im, out, "--out"), (im, tmp_path / "t.png", "--trajectory")])
    assert Image.open(out).size == Image.open(tmp_path / "t.png").size == (4, 4)


def test_merge_and_imagine_check_out_first(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    # the adapter does not exist: an --out error proves the output was checked before anything was read
    code, _, err = run(["merge", "--adapter", str(tmp_path / "nothing"), "--out", str(tmp_path / "file")], capsys)
    assert_one_line_error(code, err, "cannot write --out")
    code, _, err = run(["imagine", "a traffic light", "--text-model", str(tmp_path / "no-model"),
                        "--out", str(tmp_path / "file" / "x.png")], capsys)
    assert_one_line_error(code, err, "cannot write --out")


# -- 2: a damaged weights file is one line naming it ----------------------------------------------

def test_torn_text_weights_are_one_line_naming_the_file(torn_text_model, capsys):
    code, _, err = run(["text", "hi", "--model", str(torn_text_model)], capsys)
    assert_one_line_error(code, err, f"the weights file '{torn_text_model / 'model.safetensors'}' is damaged")


# -- 3: prompts that are not valid UTF-8 -----------------------------------------------------------

def test_prompt_with_undecodable_bytes_is_one_line(tiny_model, tiny_diffusion, capsys):
    bad = b"hi \xff there".decode("utf-8", "surrogateescape")  # how argv arrives
    code, _, err = run(["text", bad, "--model", str(tiny_model)], capsys)
    assert_one_line_error(code, err, "the prompt is not valid UTF-8")
    code, _, err = run(["text", "hi", "--system", bad, "--model", str(tiny_model)], capsys)
    assert_one_line_error(code, err, "--system is not valid UTF-8")
    code, _, err = run(["image", bad, "--model", str(tiny_diffusion)], capsys)
    assert_one_line_error(code, err, "the prompt is not valid UTF-8")


@pytest.mark.parametrize("env", [{}, {"PYTHONIOENCODING": "utf-8:strict"}])
def test_chat_stdin_with_undecodable_bytes_is_one_line(tiny_model, env):
    """Piped bytes reach input() as lone surrogates (a lenient stdin) or as a decode error (a strict one)."""
    import os

    proc = subprocess.run([sys.executable, "-m", "genlab", "chat", "--model", str(tiny_model), "--max-new-tokens", "3"],
                          input=b"hi \xff\n", capture_output=True, timeout=120, env={**os.environ, **env})
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2, err
    assert err.strip().splitlines()[-1].startswith("genlab: error: the prompt is not valid UTF-8"), err
    assert "Traceback" not in err


def test_python_api_prompts_with_surrogates_are_genlab_errors(tiny_model):
    from genlab import TextGenerator

    gen = TextGenerator(str(tiny_model))
    with pytest.raises(GenlabError, match="not valid UTF-8"):
        gen.generate("a \udcff b", max_new_tokens=2)
    with pytest.raises(GenlabError, match=r"messages\[0\]\['content'\] is not valid UTF-8"):
        gen.chat([{"role": "user", "content": "\ud800"}], max_new_tokens=2)
    with pytest.raises(GenlabError, match="a stop string is not valid UTF-8"):
        SamplingParams(stop=["\udcff"])
    with pytest.raises(GenlabError, match="^negative_prompt is not valid UTF-8"):
        ImageRequest("1", negative_prompt="\udcff")


def test_errors_name_fields_in_python_and_flags_on_the_cli(capsys, tmp_path):
    """One check, two front ends: Python callers read the names they passed, the CLI the flags typed."""
    cases = [(dict(steps=0), ["--steps", "0"], "steps must be an integer of at least 1, got 0"),
             (dict(n=0), ["-n", "0"], "n must be an integer between 1 and 64, got 0"),
             (dict(trajectory_frames=999), ["--trajectory", str(tmp_path / "t.png"), "--frames", "999"],
              "trajectory_frames must be an integer between 0 and 256, got 999"),
             (dict(mask="m.png"), ["--mask", "m.png"], "mask needs init_image: the picture to inpaint")]
    flags = {"steps": "--steps", "n": "-n", "trajectory_frames": "--frames", "mask needs init_image": "--mask needs --init-image"}
    for kwargs, args, message in cases:
        with pytest.raises(GenlabError, match=f"^{re.escape(message)}$"):
            ImageRequest("1", **kwargs)
        head = next(k for k in flags if message.startswith(k))
        code, _, err = run(["image", "1", "--out", str(tmp_path / "x.png"), *args], capsys)
        assert_one_line_error(code, err, flags[head] + message[len(head):])


# -- 4 and 5: every number finite and in its range --------------------------------------------------

@pytest.mark.parametrize("args,fragment", [
    (["text", "hi", "--temperature", "inf"], "--temperature must be a finite number between 0 and 100, got inf"),
    (["text", "hi", "--temperature", "nan"], "--temperature must be a finite number between 0 and 100, got nan"),
    (["text", "hi", "--temperature", "101"], "--temperature must be a finite number between 0 and 100, got 101.0"),
    (["text", "hi", "--repetition-penalty", "inf"], "--repetition-penalty must be a finite number above 0 and at most 100"),
    (["text", "hi", "--top-p", "nan"], "--top-p must be a finite number above 0 and at most 1, got nan"),
    (["text", "hi", "--min-p", "-inf"], "--min-p must be a finite number between 0 and 1, got -inf"),
    (["text", "hi", "--top-logprobs", "21", "--json"], "--top-logprobs must be an integer between 0 and 20, got 21"),
    (["chat", "--temperature", "inf"], "--temperature must be a finite number between 0 and 100, got inf"),
    (["chat", "--repetition-penalty", "-inf"], "--repetition-penalty must be a finite number above 0"),
])
def test_text_numbers_must_be_finite_and_in_range(args, fragment, capsys):
    assert_one_line_error(*run(args, capsys)[::2], fragment)


@pytest.mark.parametrize("extra,fragment", [
    (["--guidance", "inf"], "--guidance must be a finite number between 0 and 100, got inf"),
    (["--guidance", "nan"], "--guidance must be a finite number between 0 and 100, got nan"),
    (["--strength", "inf", "--init-image", "x.png"], "--strength must be a finite number between 0 and 1, got inf"),
    (["--eta", "inf"], "--eta must be a finite number between 0 and 1, got inf"),
    (["--eta", "1.5"], "--eta must be a finite number between 0 and 1, got 1.5"),
    (["--adapter-scale", "inf"], "--adapter-scale must be a finite number between 0 and 4, got inf"),
    (["-n", "65"], "-n must be an integer between 1 and 64, got 65"),
    (["-n", "100000000"], "-n must be an integer between 1 and 64, got 100000000"),
    (["--trajectory", "t.png", "--frames", "100000"], "--frames must be an integer between 0 and 256, got 100000"),
])
def test_image_numbers_must_be_finite_and_in_range(tiny_diffusion, extra, fragment, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(["image", "1", "--model", str(tiny_diffusion)] + extra, capsys)
    assert_one_line_error(code, err, fragment)
    assert not list(tmp_path.glob("*.png"))


def test_imagine_numbers_are_checked_before_the_models_load(tmp_path, capsys):
    # the text model does not exist: the guidance error proves the numbers were checked first
    args = ["imagine", "a traffic light", "--text-model", str(tmp_path / "no-model"), "--out", str(tmp_path / "x.png")]
    assert_one_line_error(*run(args + ["--guidance", "inf"], capsys)[::2], "--guidance must be a finite number")
    assert_one_line_error(*run(args + ["--seed", "-1"], capsys)[::2], "--seed must be between 0 and 2^63 - 1")


def test_library_types_refuse_what_the_cli_refuses():
    """The server and the Python API build the same types, so they get the same answers."""
    for bad in (dict(temperature=float("inf")), dict(top_k=1.5), dict(max_new_tokens=True), dict(temperature="0.7")):
        with pytest.raises(GenlabError):
            SamplingParams(**bad)
    for bad in (dict(n=65), dict(steps=float("inf")), dict(guidance=float("-inf")), dict(strength=float("nan"))):
        with pytest.raises(GenlabError):
            ImageRequest("1", **bad)
    assert ImageRequest("1", n=64, guidance=100, eta=1).n == 64


def test_check_number_says_what_is_accepted():
    check_number("x", 3, 1, 64, integer=True)
    check_number("x", 0.5, 0, 1, above=True)
    with pytest.raises(GenlabError, match=r"^x must be a finite number above 0 and at most 1, got 0$"):
        check_number("x", 0, 0, 1, above=True)
    with pytest.raises(GenlabError, match=r"^x must be an integer of at least 1, got 2.0$"):
        check_number("x", 2.0, 1, integer=True)
