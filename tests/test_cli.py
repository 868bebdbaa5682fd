"""The `genlab` command: real runs on a tiny model, and one clear line for every bad input."""

import json
import os
import subprocess
import sys

import pytest

from genlab import TextGenerator
from genlab.cli import main


def run(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    out, err = capsys.readouterr()
    return e.value.code, out, err


def assert_one_line_error(code, err, fragment):
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("genlab: error:"), err
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize("args,fragment", [
    (["text", "hi", "--temperature", "-1"], "--temperature must be a finite number between 0 and 100, got -1.0"),
    (["text", "hi", "--top-p", "0"], "--top-p must be a finite number above 0 and at most 1, got 0.0"),
    (["text", "hi", "--top-p", "1.5"], "--top-p must be a finite number above 0 and at most 1, got 1.5"),
    (["text", "hi", "--top-k", "-3"], "--top-k must be an integer of at least 0, got -3"),
    (["text", "hi", "--max-new-tokens", "0"], "--max-new-tokens must be an integer of at least 1, got 0"),
    (["text", "hi", "--model", "no-such-model"], "unknown model 'no-such-model'; accepted: smollm2-135m-instruct"),
    (["text", "hi", "--model", "/nonexistent/model.gguf"], "no such GGUF file"),
    (["text", "hi", "--model", "someone/not-cached-anywhere"], "not in the local Hugging Face cache"),
    (["text", "hi", "--device", "tpu"], "device"),
    (["text", "hi", "--dtype", "int3"], "unknown dtype 'int3'"),
    (["text", "hi", "--bogus-flag"], "No such option: --bogus-flag"),
    (["text"], "Missing argument 'prompt'"),
    (["text", "hi", "--temperature", "warm"], "Invalid value for '--temperature'"),
])
def test_bad_input_is_one_line_and_exit_2(args, fragment, capsys):
    assert_one_line_error(*run(args, capsys)[::2], fragment)


def test_bad_input_needing_a_model(tiny_model, capsys):
    code, _, err = run(["text", "   ", "--model", str(tiny_model)], capsys)
    assert_one_line_error(code, err, "the prompt is empty")
    code, _, err = run(["text", "hi", "--model", str(tiny_model), "--max-new-tokens", "1000"], capsys)
    assert_one_line_error(code, err, "does not fit: the prompt has")


def test_corrupt_model_files(tmp_path, capsys):
    not_gguf = tmp_path / "broken.gguf"
    not_gguf.write_bytes(b"\x00" * 1000)
    assert_one_line_error(*run(["text", "hi", "--model", str(not_gguf)], capsys)[::2], "is not a GGUF file")
    torn = tmp_path / "torn.gguf"
    torn.write_bytes(b"GGUF" + os.urandom(2000))  # right magic, garbage after it
    assert_one_line_error(*run(["text", "hi", "--model", str(torn)], capsys)[::2], "cannot read")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert_one_line_error(*run(["text", "hi", "--model", str(folder)], capsys)[::2], "is not a Hugging Face model folder")


def test_same_seed_same_text_through_cli_and_api(tiny_model, capsys):
    args = ["text", "The import statement", "--model", str(tiny_model), "--raw", "--seed", "7",
            "--temperature", "1.0", "--top-p", "0.9", "--max-new-tokens", "25", "--json"]
    code1, out1, _ = run(args, capsys)
    code2, out2, _ = run(args, capsys)
    first, second = json.loads(out1), json.loads(out2)
    assert code1 == code2 == 0
    assert first["text"] == second["text"] and first["seed"] == 7
    api = TextGenerator(str(tiny_model)).generate("The import statement", raw=True, seed=7, temperature=1.0,
                                                  top_p=0.9, max_new_tokens=25)
    assert api == first["text"]
    other = json.loads(run([a if a != "7" else "8" for a in args], capsys)[1])
    assert other["text"] != first["text"]


def test_json_output_carries_usage_timings_and_top_probabilities(tiny_model, capsys):
    code, out, _ = run(["text", "Explain", "--model", str(tiny_model), "--max-new-tokens", "6", "--temperature", "0",
                        "--json", "--top-logprobs", "3"], capsys)
    result = json.loads(out)
    assert code == 0 and result["finish_reason"] in ("length", "stop")
    assert result["usage"]["completion_tokens"] == len(result["tokens"]) <= 6
    assert result["usage"]["prompt_tokens"] > 2  # the chat template wrapped the prompt
    for t in result["tokens"]:
        probs = [c["prob"] for c in t["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1.0001
        assert t["id"] == t["top"][0]["id"]  # greedy picks the top candidate
    assert result["timings"]["ttft_s"] > 0


def test_streams_text_and_prints_timings(tiny_model, capsys):
    code, out, err = run(["text", "Hello", "--model", str(tiny_model), "--max-new-tokens", "8", "--seed", "1"], capsys)
    assert code == 0 and out.strip()
    assert "tok/s" in err and "seed 1" in err


def test_models_lists_every_bundled_model_on_stdout(capsys):
    from genlab.registry import BUNDLED

    code, out, _ = run(["models"], capsys)
    assert code == 0
    for name in BUNDLED:
        assert name in out


def test_help_explains_the_options(capsys):
    code, out, _ = run(["text", "--help"], capsys)
    assert code == 0
    for option in ("--temperature", "--top-p", "--min-p", "--repetition-penalty", "--stop", "--seed", "--json"):
        assert option in out


def test_chat_repl_keeps_the_conversation(tiny_model):
    """The real console script, typed into: two turns, a reset, an exit."""
    proc = subprocess.run([sys.executable, "-m", "genlab", "chat", "--model", str(tiny_model), "--max-new-tokens", "5",
                           "--seed", "3"], input="hello\nand again\n/reset\nhi\n/exit\n", capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(">>> ") == 5  # one prompt per line typed
    assert "conversation cleared" in proc.stderr
    assert proc.stderr.count("tok/s") == 3
