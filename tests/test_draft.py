"""`genlab train draft` and `--speculative draft`: a draft distilled from a target's own replies,
whose guesses never change the target's text, and one clear line for a draft that cannot serve."""

import json
from collections import Counter

import pytest

from genlab import TextGenerator
from test_cli import assert_one_line_error, run

TINY = ["--prompts", "8", "--reply-tokens", "16", "--context", "32", "--width", "32", "--layers", "1", "--heads", "2",
        "--vocab-size", "256", "--checkpoint-every", "10", "--sample-every", "10"]


@pytest.fixture(scope="module")
def draft(tiny_model, tmp_path_factory):
    """A draft of the tiny test model, trained for 20 steps and resumed to 30."""
    import contextlib

    from genlab.cli import main

    out = tmp_path_factory.mktemp("draft") / "run"
    for args in (["--steps", "20"], ["--steps", "30", "--resume"]):
        with contextlib.suppress(SystemExit):
            main(["train", "draft", "--target", str(tiny_model), "--out", str(out), *TINY, *args])
    return out


def test_a_draft_trains_from_the_targets_replies_and_resumes(draft):
    corpus = json.loads((draft / "corpus.json").read_text())
    assert len(corpus) == 8 and all(len(seq) > 16 for seq in corpus)  # each: the chat prompt, then 16 reply tokens
    record = json.loads((draft / "model" / "genlab-train.json").read_text())
    assert record["step"] == 30 and 0.0 <= record["held_out_agreement"] <= 1.0
    meta = json.loads((draft / "model" / "genlab.json").read_text())
    frequent = [t for t, _ in Counter(t for seq in corpus for t in seq).most_common(255)]
    assert meta["kind"] == "draft" and meta["ids"] == frequent  # --vocab-size 256: the 255 most frequent ids, and "other"
    steps = [json.loads(line)["step"] for line in (draft / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 31))  # the resumed run carried on from step 20's checkpoint


def test_draft_guesses_leave_greedy_text_unchanged(tiny_model, draft):
    gen = TextGenerator(str(tiny_model), draft=str(draft / "model"))
    for prompt in ("hello there", "the cat sat on"):
        off = gen.complete(prompt, max_new_tokens=24, temperature=0, ignore_eos=True, speculative="off")
        guessed = gen.complete(prompt, max_new_tokens=24, temperature=0, ignore_eos=True, speculative="draft")
        assert [t.token_id for t in guessed.tokens] == [t.token_id for t in off.tokens]
        assert guessed.stats.draft_tokens > 0  # the draft did guess, and its guesses were checked


def test_a_draft_for_another_tokenizer_is_one_line(draft, capsys):
    code, _, err = run(["text", "hi", "--speculative", "draft", "--draft", str(draft / "model"), "-n", "4"], capsys)
    assert_one_line_error(code, err, "whose tokenizer differs from this model's")


@pytest.mark.parametrize("args,fragment", [
    (["--speculative", "draft"], "speculative draft needs a draft model: give --draft FOLDER"),
    (["--speculative", "draft", "--draft", "/nonexistent/draft"], "is not a draft model folder"),
])
def test_draft_bad_input_is_one_line(args, fragment, capsys):
    code, _, err = run(["text", "hi", "-n", "4", *args], capsys)
    assert_one_line_error(code, err, fragment)


def test_a_draft_is_not_a_text_model(draft, capsys):
    code, _, err = run(["text", "hi", "--model", str(draft / "model")], capsys)
    assert_one_line_error(code, err, "is a draft model (genlab train draft)")
