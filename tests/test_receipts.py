"""Receipts and replay: every PNG and text result carries its generation record, and `genlab replay`
makes it again byte for byte, from the CLI, the Python API and the server alike.
"""

import base64
import hashlib
import json
import os
import subprocess
import sys

import httpx
import pytest
from PIL import Image

from genlab.errors import GenlabError
from genlab.image.generator import ImageGenerator
from genlab.receipts import read_record, weights_digest
from genlab.replay import WeightsChanged, replay

ENV = dict(os.environ, HF_HUB_OFFLINE="1", GENLAB_QUIET="1")


def genlab(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "genlab", *map(str, args)], capture_output=True, text=True, timeout=300,
                          env=ENV, cwd=cwd)


def test_cli_png_carries_its_record_and_replays(tmp_path):
    one, grid = tmp_path / "seven.png", tmp_path / "shapes.png"
    assert genlab("image", "a handwritten 7", "--seed", 3, "--steps", 8, "--out", one).returncode == 0
    r = genlab("image", "a red circle above a blue square", "-n", 2, "--scale", 2, "--seed", 4, "--steps", 6,
               "--negative-prompt", "a green square", "--out", grid)
    assert r.returncode == 0, r.stderr
    with Image.open(one) as im:
        parameters, record = im.info["parameters"], json.loads(im.info["genlab"])
    assert parameters.startswith("a handwritten 7\nSteps: 8, Sampler: dpmpp, CFG scale: 1.25, Seed: 3, Size: 16x16, "
                                 "Model hash: ") and parameters.endswith("Model: digits, Version: genlab 0.1.0")
    assert record["weights"] == weights_digest(ImageGenerator("digits").folder) and len(record["weights"]) == 64
    assert {k: record[k] for k in ("model", "prompt", "seed", "steps", "sampler", "size", "n", "index")} == {
        "model": "digits", "prompt": "a handwritten 7", "seed": 3, "steps": 8, "sampler": "dpmpp", "size": "16x16",
        "n": 1, "index": 0}
    shapes = read_record(grid)
    assert shapes["index"] is None and shapes["scale"] == 2 and shapes["negative_prompt"] == "a green square"
    assert "Negative prompt: a green square\n" in Image.open(grid).info["parameters"]
    r = genlab("replay", one, grid)
    assert r.returncode == 0, r.stderr
    assert "seven.png: identical" in r.stdout + r.stderr and "shapes.png: identical" in r.stdout + r.stderr


def test_python_api_png_is_the_cli_png(tmp_path):
    gen = ImageGenerator("digits")
    [im] = gen.generate("a handwritten 7", seed=3, steps=8)
    im.save(tmp_path / "api.png")  # a plain PIL save keeps the receipt
    assert genlab("image", "a handwritten 7", "--seed", 3, "--steps", 8, "--out", tmp_path / "cli.png").returncode == 0
    assert (tmp_path / "api.png").read_bytes() == (tmp_path / "cli.png").read_bytes()
    assert replay(tmp_path / "api.png").same


def test_changed_weights_are_named_not_replayed(tiny_diffusion, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "model"
    shutil.copytree(tiny_diffusion, folder)
    ImageGenerator(str(folder)).generate("1", seed=0, steps=3)[0].save(tmp_path / "one.png")
    assert replay(tmp_path / "one.png").same
    [weights] = list(folder.glob("*.safetensors"))
    state = load_file(weights)
    name = next(iter(state))
    state[name] = state[name] + torch.full_like(state[name], 1e-3)
    save_file(state, weights)
    with pytest.raises(WeightsChanged, match="have changed since this output was made"):
        replay(tmp_path / "one.png")
    r = genlab("replay", tmp_path / "one.png")
    assert r.returncode == 1 and "have changed since" in r.stdout + r.stderr and "Traceback" not in r.stderr


def test_replay_refuses_files_without_a_record(tmp_path):
    Image.new("L", (4, 4)).save(tmp_path / "plain.png")
    (tmp_path / "x.json").write_text('{"text": "hi"}')
    for name, words in (("plain.png", "holds no genlab record"), ("x.json", "holds no genlab record"),
                        ("missing.png", "is not a file")):
        with pytest.raises(GenlabError, match=words):
            read_record(tmp_path / name)
    r = genlab("replay", tmp_path / "plain.png")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "holds no genlab record" in r.stderr


def test_cli_text_json_carries_its_record_and_replays(tmp_path):
    r = genlab("text", "Name a colour.", "--max-new-tokens", 12, "--seed", 5, "--temperature", 0.9, "--json")
    assert r.returncode == 0, r.stderr
    answer = json.loads(r.stdout)
    record = answer["record"]
    assert record["model"] == "smollm2-135m-instruct" and record["engine"] in ("onnx", "torch")
    assert record["choices"] == [{"index": 0, "prompt": "Name a colour.", "system": None, "raw": False, "steps": None, "seed": 5}]
    assert record["sampling"]["temperature"] == 0.9 and record["sampling"]["max_new_tokens"] == 12
    (tmp_path / "t.json").write_text(r.stdout)
    done = replay(tmp_path / "t.json")
    assert done.same, done.line()
    answer["text"] += "!"  # an edited answer is caught
    (tmp_path / "edited.json").write_text(json.dumps(answer))
    assert not replay(tmp_path / "edited.json").same


def test_server_outputs_carry_records_that_replay(server, tmp_path):
    r = httpx.post(server.url + "/v1/images/generations", json={"prompt": "a handwritten 2", "n": 2, "seed": 8, "steps": 6},
                   timeout=120)
    second = base64.b64decode(r.json()["data"][1]["b64_json"])
    (tmp_path / "two.png").write_bytes(second)
    assert read_record(tmp_path / "two.png")["index"] == 1
    assert replay(tmp_path / "two.png").same

    body = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 10, "seed": 2, "n": 2}
    answer = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120).json()
    gen = server.app.state.models.text["smollm2-135m-instruct"]
    assert answer["system_fingerprint"] == f"genlab-0.1.0-{weights_digest(gen.weights_path)[:12]}"
    assert [c["seed"] for c in answer["record"]["choices"]] == [2, 3]
    (tmp_path / "chat.json").write_text(json.dumps(answer))
    assert replay(tmp_path / "chat.json").same

    with httpx.stream("POST", server.url + "/v1/chat/completions", json=dict(body, n=1, stream=True), timeout=120) as s:
        chunks = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: {")]
    [last] = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]  # the finish chunk carries it
    assert last["record"]["choices"][0]["seed"] == 2 and last["record"]["sampling"] == answer["record"]["sampling"]


def test_an_edit_replays_with_its_picture(server, tmp_path):
    import io

    seven = io.BytesIO()
    ImageGenerator("digits").generate("7", seed=1, steps=5)[0].save(seven, format="PNG")
    r = httpx.post(server.url + "/v1/images/edits", data={"prompt": "a handwritten 1", "seed": "3", "steps": "6"},
                   files={"image": ("seven.png", seven.getvalue(), "image/png")}, timeout=120)
    (tmp_path / "edit.png").write_bytes(base64.b64decode(r.json()["data"][0]["b64_json"]))
    record = read_record(tmp_path / "edit.png")
    assert record["strength"] == 0.75 and record["init_image"] == {"sha256": hashlib.sha256(seven.getvalue()).hexdigest()}
    with pytest.raises(GenlabError, match="give that file with --init-image FILE"):
        replay(tmp_path / "edit.png")
    (tmp_path / "seven.png").write_bytes(seven.getvalue())
    Image.new("L", (16, 16), 9).save(tmp_path / "other.png")
    with pytest.raises(GenlabError, match="is not the init_image picture"):
        replay(tmp_path / "edit.png", init_image=tmp_path / "other.png")
    assert replay(tmp_path / "edit.png", init_image=tmp_path / "seven.png").same  # the CLI: --init-image seven.png
