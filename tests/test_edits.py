"""POST /v1/images/edits through the official openai SDK, on the real loopback server.

Parity: an edit equals ImageGenerator's img2img / inpainting with the same picture, mask and
seed, byte for byte; OpenAI's transparent-hole mask and a white-on-black mask mean the same.
Errors: a GAN names the models that edit; broken uploads are one 4xx line.
"""

import base64
import io

import httpx
import pytest
from PIL import Image

from genlab.image.generator import ImageRequest

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def seven(server) -> bytes:
    """A real picture to edit: the digits model's own 7."""
    [im] = server.app.state.models.image["digits"].generate("7", steps=10, seed=3)
    return _png(im)


def _png(im) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, format="PNG")
    return buffer.getvalue()


def _picture(b64: str):
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_img2img_equals_the_python_api(server, client, seven):
    answer = client.images.edit(model="digits", image=("seven.png", seven, "image/png"), prompt="a handwritten 3",
                                extra_body={"strength": 0.8, "seed": 5, "steps": 12})
    [data] = answer.data
    gen = server.app.state.models.image["digits"]
    [want] = gen.run(ImageRequest("a handwritten 3", init_image=io.BytesIO(seven), strength=0.8, seed=5, steps=12)).images
    assert base64.b64decode(data.b64_json) == _png(want)
    assert _picture(data.b64_json).size == Image.open(io.BytesIO(seven)).size
    # strength decides how far it moves: a light touch stays nearer the original than a heavy one
    light = client.images.edit(model="digits", image=("seven.png", seven, "image/png"), prompt="a handwritten 3",
                               extra_body={"strength": 0.2, "seed": 5, "steps": 12}).data[0]
    assert _distance(light.b64_json, seven) < _distance(data.b64_json, seven)


def test_inpainting_with_an_openai_mask_keeps_the_rest(server, client, seven):
    w, h = Image.open(io.BytesIO(seven)).size
    hole = Image.open(io.BytesIO(seven)).convert("RGBA")  # OpenAI's convention: transparent = repaint
    for x in range(w // 2, w):
        for y in range(h):
            hole.putpixel((x, y), (0, 0, 0, 0))
    white = Image.new("L", (w, h), 0)  # the same area, white on black (AUTOMATIC1111's convention)
    white.paste(255, (w // 2, 0, w, h))
    options = {"model": "digits", "image": ("seven.png", seven, "image/png"), "prompt": "a handwritten 0",
               "extra_body": {"seed": 9, "steps": 12}}
    a = client.images.edit(mask=("mask.png", _png(hole), "image/png"), **options).data[0].b64_json
    b = client.images.edit(mask=("mask.png", _png(white), "image/png"), **options).data[0].b64_json
    assert a == b
    gen = server.app.state.models.image["digits"]
    [want] = gen.run(ImageRequest("a handwritten 0", init_image=io.BytesIO(seven), mask=io.BytesIO(_png(white)),
                                  strength=1.0, seed=9, steps=12)).images
    assert base64.b64decode(a) == _png(want)
    out, before = _picture(a).convert("L"), Image.open(io.BytesIO(seven)).convert("L")
    kept = sum(abs(out.getpixel((x, y)) - before.getpixel((x, y))) for x in range(w // 2 - 2) for y in range(h))
    drawn = sum(abs(out.getpixel((x, y)) - before.getpixel((x, y))) for x in range(w // 2 + 2, w) for y in range(h))
    assert kept < drawn / 4, (kept, drawn)


def _distance(b64: str, original: bytes) -> int:
    a, b = _picture(b64).convert("L"), Image.open(io.BytesIO(original)).convert("L")
    return sum(abs(p - q) for p, q in zip(a.tobytes(), b.tobytes()))


def test_a_model_that_cannot_edit_names_those_that_can(client, seven):
    with pytest.raises(openai.BadRequestError) as e:
        client.images.edit(model="digits-gan", image=("seven.png", seven, "image/png"), prompt="7")
    message = e.value.body["message"]
    assert "cannot edit" in message and "digits, digits-distilled, shapes" in message


def _huge_png() -> bytes:
    return _png(Image.new("L", (10000, 10000), 0))  # ~100 kB on the wire, 100 megapixels decoded


@pytest.mark.parametrize("send, status, words", [
    (dict(json={"prompt": "7"}), 400, "multipart/form-data"),
    (dict(content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data; boundary=x"}), 400, None),
    (dict(data={"prompt": "7"}, files={"mask": ("m.png", b"x")}), 400, "image is required"),
    (dict(data={"prompt": "7"}, files={"image": ("a.png", b"not a picture at all")}), 400, "cannot read image (the uploaded picture): it is not a picture"),
    (dict(data={"prompt": "7"}, files={"image": ("a.png", "HUGE")}), 400, "10000x10000 pixels; genlab reads pictures of at most 16 megapixels"),
    (dict(data={"prompt": "7"}, files={"image": ("a.png", "SEVEN"), "mask": ("m.png", _png(Image.new("L", (5, 5))))}),
     400, "mask is 5x5 but image is"),
    (dict(data={"prompt": "7", "strength": "2"}, files={"image": ("a.png", "SEVEN")}), 400, "strength must be"),
    (dict(data={"prompt": "7", "style": "vivid"}, files={"image": ("a.png", "SEVEN")}), 422, "style"),
    (dict(data={}, files={"image": ("a.png", "SEVEN")}), 422, "prompt"),
    (dict(data={"prompt": "7", "size": "1024x1024"}, files={"image": ("a.png", "SEVEN")}), 400, "draws 16x16"),
    (dict(data={"prompt": "7"}, files={"image": ("a.png", "SEVEN"), "extra": ("b.png", "SEVEN")}), 400, "unexpected file"),
])
def test_bad_uploads_are_one_clear_error(server, seven, send, status, words):
    if "files" in send:
        send["files"] = {k: (n, seven if v == "SEVEN" else _huge_png() if v == "HUGE" else v) for k, (n, v) in send["files"].items()}
    r = httpx.post(server.url + "/v1/images/edits", timeout=60, **send)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and "\n" not in error["message"]
    assert words is None or words in error["message"], error
    assert httpx.get(server.url + "/health").status_code == 200
