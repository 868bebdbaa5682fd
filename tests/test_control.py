"""Spatial control (data/layouts.py, diffusion/control.py): layouts and sketches, the branch's training, every interface."""

import base64
import io
import json
import random

import pytest
import torch

from genlab.data.layouts import CONTROL_CHANNELS, Layout, control_maps, placed, random_layout
from genlab.data.shapes import render
from genlab.errors import GenlabError
from genlab.eval.shapes import detect

TWO = {"objects": [{"color": "red", "shape": "circle", "box": [2, 4, 16, 18]},
                   {"color": "blue", "shape": "square", "box": [18, 14, 31, 27]}]}


def test_a_layout_parses_renders_and_is_scored_on_real_pixels():
    layout = Layout.parse(json.dumps(TWO))
    assert layout.prompt() == "a red circle and a blue square" and [o.size for o in layout.objects] == ["big", "small"]
    maps = control_maps(layout)
    assert maps.shape == (CONTROL_CHANNELS, 32, 32) and maps[-1].sum() == 0  # no sketch
    assert maps[0, 4:18, 2:16].eq(1).all() and maps[0].sum() == 14 * 14  # red, inside the first box only
    assert maps[4, 14:27, 18:31].eq(1).all() and maps[-2].sum() == 14 * 14 + 13 * 13  # blue; the box mask
    # the checker on the layout's own rendering: every object in its box; moved or recoloured objects are not
    assert placed(detect(render(layout.scene())), layout) == [True, True]
    moved = Layout.parse({"objects": [dict(TWO["objects"][0], box=[17, 4, 31, 18]), TWO["objects"][1]]})
    assert placed(detect(render(moved.scene())), layout) == [False, True]
    wrong = Layout.parse({"objects": [dict(TWO["objects"][0], color="green"), TWO["objects"][1]]})
    assert placed(detect(render(wrong.scene())), layout) == [False, True]
    for i in range(30):  # random layouts: boxes apart, inside the picture, and the world draws them as laid out
        lay = random_layout(random.Random(i))
        assert all(placed(detect(render(lay.scene())), lay)), lay


def test_a_size_fits_the_box_around_its_centre():
    """"size" says how big the shape in the box is: the box becomes that size's around the same centre, inside the picture."""
    first, second = TWO["objects"]
    layout = Layout.parse({"objects": [dict(first, size="small"), dict(second, size="big")]})
    assert [o.box for o in layout.objects] == [(4, 6, 14, 16), (17, 13, 31, 27)]
    assert [o.size for o in layout.objects] == ["small", "big"] and [o.centre for o in layout.objects] == [(9, 11), (24, 20)]
    corner = Layout.parse({"objects": [{"color": "red", "shape": "circle", "size": "big", "box": [22, 0, 32, 9]}]})
    assert corner.objects[0].box == (18, 0, 32, 14)  # moved in from the edge, not cut
    assert Layout.parse(corner.to_json()) == corner and "size" not in corner.to_json()["objects"][0]


@pytest.mark.parametrize("value,message", [
    ({"objects": [{"color": "red", "shape": "circle", "size": "huge", "box": [0, 0, 10, 10]}]},
     'layout object 0 has size "huge"; sizes are small and big'),
    ({"objects": [{"color": "red", "shape": "circle", "size": ["big"], "box": [0, 0, 10, 10]}]},
     'layout object 0 has size ["big"]; sizes are small and big'),
    ({"objects": [{"color": "pink", "shape": "circle", "box": [0, 0, 10, 10]}]}, "layout object 0 has colour 'pink'; the shapes model knows red"),
    ({"objects": [{"color": "red", "shape": "star", "box": [0, 0, 10, 10]}]}, "layout object 0 has shape 'star'; the shapes model knows circle"),
    ({"objects": [{"color": "red", "shape": "circle", "box": [0, 0, 40, 10]}]}, "box [0, 0, 40, 10] is outside the 32x32 picture"),
    ({"objects": [{"color": "red", "shape": "circle", "box": [10, 0, 5, 10]}]}, "is outside the 32x32 picture"),
    ({"objects": [{"color": "red", "shape": "circle", "box": [0, 0, 5, 5]}]}, "box [0, 0, 5, 5] is 5x5 pixels; a shape needs at least 8x8"),
    ({"objects": [{"color": "red", "shape": "circle", "box": [0, 0, 10]}]}, "box must be 4 integers"),
    ({"objects": [{"color": "red", "shape": "circle"}]}, "layout object 0 must be"),
    ({"objects": []}, "layout must hold 1 to 3 objects"),
    ({"objects": [TWO["objects"][0]] * 4}, "layout must hold 1 to 3 objects"),
    ("{not json", "layout is not valid JSON"),
])
def test_bad_layouts_are_one_line(value, message):
    with pytest.raises(GenlabError) as e:
        Layout.parse(value)
    assert message in str(e.value) and "\n" not in str(e.value)


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_control_pictures_are_read_or_refused(tmp_path):
    from PIL import Image, ImageDraw

    from genlab.image.canvas import read_sketch as read_control

    paper = Image.new("RGB", (128, 128), "white")  # a pencil sketch on white paper: turned round
    ImageDraw.Draw(paper).ellipse([20, 20, 80, 80], outline="black", width=6)
    paper.save(tmp_path / "sketch.png")
    sketch = read_control(str(tmp_path / "sketch.png"))
    assert sketch.shape == (32, 32) and sketch[5, 12] > 0.3 and sketch[12, 12] < 0.1 and sketch[0, 0] == 0 == sketch[31, 31]
    assert torch.equal(read_control(_png(paper)), sketch)  # bytes, as the server passes them
    Image.new("RGB", (64, 32)).save(tmp_path / "wide.png")
    Image.new("RGB", (64, 64)).save(tmp_path / "blank.png")
    (tmp_path / "text.png").write_text("not a picture")
    for name, message in [("wide.png", "control must be a square picture of at least 16x16 pixels"), ("blank.png", "is blank"),
                          ("text.png", "cannot read control"), ("missing.png", "cannot read control")]:
        with pytest.raises(GenlabError, match=message):
            read_control(str(tmp_path / name))


@pytest.fixture(scope="module")
def controlled(tiny_t2i_folder, tmp_path_factory):
    """A ControlNet branch trained for a few steps on the tiny text-to-image model, through the CLI, killed and resumed."""
    from genlab.cli import main

    out = tmp_path_factory.mktemp("control") / "run"
    base = ["train", "control", "--base", str(tiny_t2i_folder), "--out", str(out), "--images", "32", "--batch-size", "4",
            "--checkpoint-every", "2", "--sample-every", "0"]
    for args in (base + ["--steps", "2"], ["train", "control", "--out", str(out), "--resume", "--steps", "3"]):
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 0
    return out


def test_the_branch_trains_on_the_shared_loop_resumes_and_starts_from_the_base(controlled, tiny_t2i_folder):
    from genlab.diffusion.text2image import load_text2image

    rows = [json.loads(line) for line in (controlled / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    model = load_text2image(controlled / "model")
    base = load_text2image(tiny_t2i_folder)
    assert model.control is not None and base.control is None
    zt, t = torch.randn(2, 4, 8, 8), torch.tensor([500, 20])
    states = base.condition("a red circle", 2)["states"]
    maps = control_maps(Layout.parse(TWO)).expand(2, -1, -1, -1)
    with torch.no_grad():  # zero-initialised: a fresh branch leaves the base's prediction exactly as it was
        from genlab.diffusion.control import new_branch

        fresh = new_branch(base.unet)
        torch.testing.assert_close(base(zt, t, states, control=maps, branch=fresh), base(zt, t, states))
        assert not torch.allclose(model(zt, t, states, control=maps), base(zt, t, states))  # the trained one steers


def test_layout_and_sketch_from_cli_python_and_server(controlled, tmp_path, capsys):
    """The same seed gives the same PNG from `genlab image --layout`, ImageGenerator and the server's `layout` field."""
    from genlab.cli import main
    from genlab.image.generator import ImageGenerator
    from genlab.server.app import ServerConfig, create_app
    from conftest import start_server
    import httpx

    model = str(controlled / "model")
    layout = tmp_path / "layout.json"
    layout.write_text(json.dumps(TWO))
    with pytest.raises(SystemExit) as e:
        main(["image", "--layout", str(layout), "--model", model, "--steps", "4", "--seed", "3", "--out", str(tmp_path / "cli.png")])
    assert e.value.code == 0
    gen = ImageGenerator(model)
    [python] = gen.generate("", layout=TWO, steps=4, seed=3)
    assert (tmp_path / "cli.png").read_bytes() == _png(python)
    [unsteered] = gen.generate("a red circle and a blue square", steps=4, seed=3)
    assert _png(unsteered) != _png(python)
    sketch = control_maps(None, torch.zeros(32, 32))[-1]
    sketch[4:20, 4:20] = 1
    from PIL import Image

    Image.fromarray((sketch.numpy() * 255).astype("uint8")).save(tmp_path / "sketch.png")
    [drawn] = gen.generate("a red circle", control=str(tmp_path / "sketch.png"), steps=4, seed=3)
    server = start_server(create_app(ServerConfig(text_models=[], image_models=[model])))
    try:
        r = httpx.post(server.url + "/v1/images/generations", json={"prompt": "", "layout": TWO, "steps": 4, "seed": 3}, timeout=120)
        assert r.status_code == 200, r.text
        assert base64.b64decode(r.json()["data"][0]["b64_json"]) == _png(python)
        assert r.json()["data"][0]["revised_prompt"] == "a red circle and a blue square"
        r = httpx.post(server.url + "/v1/images/generations", json={"prompt": "a red circle", "steps": 4, "seed": 3,
                       "control": base64.b64encode((tmp_path / "sketch.png").read_bytes()).decode()}, timeout=120)
        assert base64.b64decode(r.json()["data"][0]["b64_json"]) == _png(drawn)
        for body, message in [({"prompt": "", "layout": {"objects": [{"color": "pink", "shape": "circle", "box": [0, 0, 9, 9]}]}},
                               "layout object 0 has colour 'pink'"),
                              ({"prompt": "a red circle", "control": "%%%"}, "control must be a base64-encoded PNG"),
                              ({"prompt": "a red circle", "control": base64.b64encode(b"GIF89a").decode()}, "cannot read control"),
                              ({"prompt": "a red circle", "layout": TWO, "control_scale": -1}, "control_scale must be")]:
            r = httpx.post(server.url + "/v1/images/generations", json=body, timeout=60)
            assert r.status_code == 400 and message in r.json()["error"]["message"], r.text
    finally:
        server.stop()
