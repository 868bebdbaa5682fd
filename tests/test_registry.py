"""The registry walk: every bundled model is listed by `genlab models` and generates the same bytes
from the CLI, the Python API and the server for the same seed. Folders say their kind in one place,
and a kind genlab does not know is one line that names the kinds."""

import base64
import io
import json
import shutil

import httpx
import pytest

from genlab.cli import main
from genlab.registry import BUNDLED, KINDS, kind_of, locate

# Fixed, short requests: the point is that three interfaces agree, not the pictures themselves.
IMAGE_REQUESTS = {"digits": ("7", {}), "digits-distilled": ("7", {"steps": 1}), "shapes": ("a red circle above a blue square", {"steps": 10}),
                  "digits-gan": ("seven", {}), "digits-ar": ("a handwritten 3", {})}
TEXT_PROMPT = "The for statement"


def run(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    out, err = capsys.readouterr()
    return e.value.code, out, err


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_every_model_kind_is_in_the_registry():
    assert set(KINDS) == {"causal-lm", "diffusion-lm", "diffusion", "text2image", "gan", "ar-image", "diffusers-pipeline"}
    assert {b.kind for b in BUNDLED.values()} == set(KINDS) - {"diffusers-pipeline"}  # every kind genlab trains ships
    for kind in KINDS.values():
        assert kind.family in ("autoregressive", "diffusion", "gan") and kind.output in ("text", "image")
        assert kind.commands and kind.routes


def test_genlab_models_lists_every_bundled_model_on_stdout(capsys):
    code, out, err = run(["models"], capsys)
    assert code == 0
    for name in BUNDLED:
        assert name in out, f"{name} missing from `genlab models`:\n{out}"
    code, out, _ = run(["models", "--json"], capsys)
    rows = {r["name"]: r for r in json.loads(out)}
    assert set(BUNDLED) <= set(rows)
    for name, b in BUNDLED.items():
        r = rows[name]
        assert r["installed"] and r["kind"] == b.kind and r["family"] == KINDS[b.kind].family
        assert r["parameters"] > 100_000 and r["size_bytes"] > 100_000 and r["generates"] and r["default_sampler"]
    assert rows["shapes"]["default_sampler"] == "ddpm, 50 steps" and rows["digits-gan"]["family"] == "gan"


@pytest.mark.parametrize("name", list(IMAGE_REQUESTS))
def test_image_model_same_bytes_from_cli_python_and_server(name, server, tmp_path, capsys):
    from genlab import ImageGenerator

    prompt, options = IMAGE_REQUESTS[name]
    out = tmp_path / "cli.png"
    args = ["image", prompt, "--model", name, "--seed", "5", "--out", str(out)]
    args += [f"--{k}={v}" for k, v in options.items()]
    code, _, err = run(args, capsys)
    assert code == 0, err
    cli = out.read_bytes()
    python = _png(ImageGenerator(name).generate(prompt, seed=5, **options)[0])
    r = httpx.post(server.url + "/v1/images/generations", timeout=120,
                   json={"model": name, "prompt": prompt, "seed": 5, "response_format": "b64_json", **options})
    assert r.status_code == 200, r.text
    served = base64.b64decode(r.json()["data"][0]["b64_json"])
    assert cli == python == served


@pytest.mark.parametrize("name", ["pydoc-gpt", "pydoc-mdlm", "smollm2-135m-instruct"])
def test_text_model_same_text_from_cli_python_and_server(name, server, capsys):
    from genlab import TextGenerator

    code, out, err = run(["text", TEXT_PROMPT, "--model", name, "--raw", "--seed", "3", "--max-new-tokens", "12",
                          "--temperature", "0.8", "--json"], capsys)
    assert code == 0, err
    cli = json.loads(out)["text"]
    python = TextGenerator(name).generate(TEXT_PROMPT, raw=True, seed=3, max_new_tokens=12, temperature=0.8)
    r = httpx.post(server.url + "/v1/completions", timeout=120,
                   json={"model": name, "prompt": TEXT_PROMPT, "seed": 3, "max_tokens": 12, "temperature": 0.8})
    assert r.status_code == 200, r.text
    assert cli == python == r.json()["choices"][0]["text"] and len(cli) > 0


def test_server_lists_every_bundled_model_with_its_family(server):
    cards = {c["id"]: c for c in httpx.get(server.url + "/v1/models").json()["data"]}
    assert set(BUNDLED) <= set(cards)
    for name, b in BUNDLED.items():
        assert cards[name]["model_kind"] == b.kind and cards[name]["family"] == KINDS[b.kind].family
        assert cards[name]["kind"] == KINDS[b.kind].output
    assert cards["digits-gan"]["samplers"] == ["generator"] and cards["digits-ar"]["default_steps"] == 64
    assert cards["digits-distilled"]["samplers"] == ["euler", "heun", "reflow"] and cards["digits-distilled"]["default_steps"] == 4
    assert cards["digits-distilled"]["distilled_from"] == "digits" and cards["digits"]["distilled_from"] is None
    assert cards["pydoc-mdlm"]["chat"] is False and cards["smollm2-135m-instruct"]["chat"] is True


def test_masked_diffusion_lm_unfolds_with_steps():
    from genlab import TextGenerator

    gen = TextGenerator("pydoc-mdlm")
    frames = []
    text = gen.complete(TEXT_PROMPT, max_new_tokens=16, steps=4, seed=0,
                        on_frame=lambda step, shown: frames.append((step.index, shown))).text
    assert [i for i, _ in frames] == [1, 2, 3, 4]
    assert frames[0][1].count("░") > frames[-1][1].count("░") == 0 and frames[-1][1] == text


def test_unknown_kind_is_one_line(tmp_path, capsys):
    folder = tmp_path / "odd"
    shutil.copytree(locate("digits-gan").path, folder)
    card = json.loads((folder / "genlab.json").read_text())
    (folder / "genlab.json").write_text(json.dumps(card | {"kind": "hologram"}))
    with pytest.raises(Exception, match="names the kind 'hologram'.*kinds: causal-lm, diffusion-lm"):
        kind_of(folder)
    code, _, err = run(["image", "7", "--model", str(folder), "--out", str(tmp_path / "x.png")], capsys)
    assert code == 2 and err.count("\n") == 1 and "hologram" in err and "gan" in err, err
    (folder / "genlab.json").write_text("{not json")
    code, _, err = run(["text", "hi", "--model", str(folder)], capsys)
    assert code == 2 and err.count("\n") == 1 and "genlab.json is not valid JSON" in err and "causal-lm" in err, err


def test_a_model_of_the_other_output_is_one_line(capsys):
    code, _, err = run(["text", "hi", "--model", "digits-gan"], capsys)
    assert code == 2 and "makes images, not text" in err and "genlab image" in err, err
    code, _, err = run(["image", "7", "--model", "pydoc-mdlm"], capsys)
    assert code == 2 and "makes text, not images" in err and "genlab text" in err, err


@pytest.mark.parametrize("args,fragment", [
    (["image", "7", "--model", "digits-gan", "--guidance", "3"], "no guidance"),
    (["image", "7", "--model", "digits-gan", "--trajectory", "t.png"], "no trajectory"),
    (["image", "7", "--model", "digits-ar", "--steps", "10"], "always takes 64 steps"),
    (["image", "7", "--model", "digits-ar", "--sampler", "ddim"], "draws 'pixel-by-pixel' only"),
    (["image", "a cat", "--model", "digits-gan"], "this model draws one of: 0, 1"),
    (["text", "hi", "--model", "pydoc-mdlm", "--stop", "x"], "cannot honour stop strings"),
    (["text", "hi", "--model", "pydoc-gpt", "--steps", "4"], "steps (unmasking steps) are for masked-diffusion LMs"),
])
def test_options_a_family_cannot_honour_are_one_line(args, fragment, tmp_path, capsys):
    code, _, err = run(args + (["--out", str(tmp_path / "x.png")] if args[0] == "image" else []), capsys)
    assert code == 2 and err.count("\n") == 1 and fragment in err, err
