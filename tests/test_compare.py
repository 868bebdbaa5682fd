"""`genlab compare`: the family matrix report, and its bad input."""

import json

import pytest

from test_cli import assert_one_line_error, run


def test_bad_input(tmp_path, capsys):
    from genlab.errors import GenlabError
    from genlab.store import bundled_weights

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, _, err = run(["compare", "--quick", "--out", str(blocker / "report")], capsys)
    assert_one_line_error(code, err, "is not a writable folder")
    code, _, err = run(["train", "transformer-gan"], capsys)
    assert_one_line_error(code, err, "No such command 'transformer-gan'. Choose one of: diffusion, vae, text2image, gan")
    with pytest.raises(GenlabError, match=r"bundled model 'nothing' is missing .* build it with `genlab train gan"):
        bundled_weights("nothing", "genlab train gan --out runs/gan")


@pytest.mark.slow
def test_quick_compare_from_the_bundled_models(tmp_path, capsys):
    """The whole quick report, from the bundled models: every family measured, every figure written."""
    code, _, err = run(["compare", "--quick", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    results = json.loads((tmp_path / "results.json").read_text())
    rows = results["rows"]
    assert {"gan", "ar-image", "diffusion", "lm", "diffusion-lm", "real digits", "real text"} <= rows.keys()
    assert rows["gan"]["nfe"] == 1 and rows["ar-image"]["nfe"] == 64 and rows["diffusion"]["nfe"] == 20
    for name in ("gan", "ar-image", "diffusion"):
        assert rows[name]["accuracy"] > 0.8, name  # the bundled models draw the digit they are asked for
        assert rows[name]["fid"] < 2 * rows["real digits"]["fid"], name  # real training digits score ~25 here
        assert rows[name]["diversity"] > 0.5, name  # no collapse
    assert 0 < rows["ar-image"]["bits_per_dim"] < 4.09  # better than not knowing the digits
    assert rows["lm"]["perplexity"] < rows["diffusion-lm"]["perplexity_bound"] * 5
    tokens = [c["tokens"] for c in results["curves"]["lm"]]
    assert tokens == sorted(tokens)
    md = (tmp_path / "report.md").read_text()
    assert "## What the measurements say" in md and "Diffusion is slower" in md
    for figure in ("samples", "unfolding", "cost", "quality"):
        assert (tmp_path / f"{figure}.png").stat().st_size > 5000 and f"({figure}.png)" in md
    html = (tmp_path / "report.html").read_text()
    assert "<table>" in html and '<img alt="samples" src="samples.png">' in html
