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
    assert_one_line_error(code, err, "No such command 'transformer-gan'. Choose one of: diffusion, vae, text2image, control, gan")
    with pytest.raises(GenlabError, match=r"bundled model 'nothing' is missing .* build it with `genlab train gan"):
        bundled_weights("nothing", "genlab train gan --out runs/gan")


@pytest.mark.slow
def test_quick_compare_from_the_bundled_models(tmp_path, capsys):
    """The whole quick report, from the bundled models: every family measured, every figure written."""
    code, _, err = run(["compare", "--quick", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    results = json.loads((tmp_path / "results.json").read_text())
    rows = results["rows"]
    assert {"gan", "ar-image", "diffusion", "distilled", "lm", "diffusion-lm", "real digits", "real text"} <= rows.keys()
    assert rows["gan"]["nfe"] == 1 and rows["ar-image"]["nfe"] == 64 and rows["diffusion"]["nfe"] == 20
    assert rows["distilled"]["nfe"] == 1 and [c["steps"] for c in results["curves"]["distilled"]] == [1, 2, 4]
    for name in ("gan", "ar-image", "diffusion", "distilled"):
        assert rows[name]["accuracy"] > 0.8, name  # the bundled models draw the digit they are asked for
        assert rows[name]["fid"] < 2 * rows["real digits"]["fid"], name  # real training digits score ~25 here
        assert rows[name]["diversity"] > 0.5, name  # no collapse
    assert 0 < rows["ar-image"]["bits_per_dim"] < 4.09  # better than not knowing the digits
    assert rows["lm"]["perplexity"] < rows["diffusion-lm"]["perplexity_bound"] * 5
    tokens = [c["tokens"] for c in results["curves"]["lm"]]
    assert tokens == sorted(tokens)
    assert [c["nfe"] for c in results["curves"]["lm"]] == tokens  # the plain loop: one pass per token, counted
    assert rows["lm"]["nfe"] == 64
    md = (tmp_path / "report.md").read_text()
    assert "## What the measurements say" in md and "Diffusion is slower" in md
    assert "| Distillation closes diffusion's speed gap to the GAN | **supported** |" in md
    for figure in ("samples", "unfolding", "cost", "quality"):
        assert (tmp_path / f"{figure}.png").stat().st_size > 5000 and f"({figure}.png)" in md
    html = (tmp_path / "report.html").read_text()
    assert "<table>" in html and '<img alt="samples" src="samples.png">' in html


@pytest.mark.slow
def test_full_compare_retrains_every_family_then_resumes(tmp_path, capsys, monkeypatch):
    """The full path at toy scale: each family trained from scratch into runs/, measured from there; a second
    compare resumes the finished runs instead of training again."""
    import genlab.cli.compare as compare_cli
    import genlab.compare.measure as compare
    import genlab.image.generator as generator
    from genlab.training import options as o

    tiny = {"steps": 3, "seed": 0, "checkpoint_every": 500, "sample_every": 0}
    monkeypatch.setitem(generator.DIGITS_OPTIONS, "steps", 3)
    text = tiny | {"vocab_size": 300, "width": 32, "layers": 1, "heads": 2, "context": 192, "batch_size": 4}
    monkeypatch.setattr(compare_cli, "retrain_options", lambda: {
        "gan": o.GanOptions(**tiny, width=16, batch_size=16), "ar-image": o.ArImageOptions(**tiny, width=32, layers=1),
        "diffusion": o.DiffusionOptions(**tiny, resolution=8, upsample=2, batch_size=16),
        "distilled": o.DistillOptions(**tiny, pairs=16, teacher_steps=2, batch_size=8),
        "lm": o.LmOptions(**text), "diffusion-lm": o.DiffusionLmOptions(**text)})
    monkeypatch.setitem(compare.SAMPLES, False, 20)
    monkeypatch.setitem(compare.DIFFUSION_SWEEP, False, (2, compare.ROW_STEPS))

    code, out, err = run(["compare", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["quick"] is False and results["samples"] == 20 and results["resumed"] == []
    rows = results["rows"]
    for family in [c.key for c in compare.CONTENDERS]:
        model = tmp_path / "runs" / family / "model"
        assert model.is_dir() and (tmp_path / "runs" / family / "checkpoints").is_dir(), family
        assert rows[family]["train_seconds"] > 0, family  # measured in this run, not read from a bundled model
    assert rows["ar-image"]["params"] < 100_000 and rows["lm"]["params"] < 100_000  # the toy models, not the bundled ones
    assert [p["steps"] for p in results["curves"]["diffusion"]] == [2, compare.ROW_STEPS]
    student = json.loads((tmp_path / "runs" / "distilled" / "model" / "genlab.json").read_text())
    assert student["distilled"]["teacher"] == str((tmp_path / "runs" / "diffusion" / "model").resolve())  # its own teacher
    assert "full (every model retrained from scratch in this run)" in (tmp_path / "report.md").read_text()

    code, out, err = run(["compare", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    again = json.loads((tmp_path / "results.json").read_text())
    assert sorted(again["resumed"]) == sorted(c.key for c in compare.CONTENDERS)
    for family in [c.key for c in compare.CONTENDERS]:  # the finished runs were not trained again
        assert again["rows"][family]["train_seconds"] == rows[family]["train_seconds"], family
