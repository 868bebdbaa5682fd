"""Bad and hostile requests against a real `genlab serve`: every one gets a 4xx in OpenAI's error
shape, one line long, and the server keeps answering. (Issue bar: at least 40 of them, including a
model that names a filesystem path, malformed multipart data, an image that is not an image, a
10000x10000 PNG and a wrong key.)
"""

import base64
import io
import json
import socket

import httpx
from PIL import Image

from genlab.server.app import ServerConfig, create_app

HI = [{"role": "user", "content": "hi"}]
CHAT, DONE, IMAGES, EDITS = "/v1/chat/completions", "/v1/completions", "/v1/images/generations", "/v1/images/edits"


def png(w: int, h: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (w, h), 0).save(buffer, format="PNG")
    return buffer.getvalue()


HUGE = png(10000, 10000)  # ~100 kB to send, 100 megapixels to decode
NOT_AN_IMAGE = b"%PDF-1.4 this is not a picture"
SEVEN = png(16, 16)


def raw(text: str) -> dict:
    """A body sent as written: JSON that Python's json.dumps would not produce (Infinity, lone surrogates)."""
    return {"content": text.encode(), "headers": {"content-type": "application/json"}}


# (method, route, httpx keyword arguments): each must be refused with a 4xx
HOSTILE = [
    # a model field that names a path, or nothing at all
    ("POST", CHAT, {"json": {"messages": HI, "model": "/etc/passwd"}}),
    ("POST", CHAT, {"json": {"messages": HI, "model": "../../src/genlab/weights/digits"}}),
    ("POST", DONE, {"json": {"prompt": "x", "model": "~/.ssh/id_rsa"}}),
    ("POST", IMAGES, {"json": {"prompt": "7", "model": "/tmp"}}),
    ("POST", IMAGES, {"json": {"prompt": "7", "model": "C:\\Windows\\system32"}}),
    ("GET", "/v1/models/..%2F..%2Fetc%2Fpasswd", {}),
    ("POST", CHAT, {"json": {"messages": HI, "model": ["smollm2-135m-instruct"]}}),
    # broken bodies
    ("POST", CHAT, {"content": b"{not json", "headers": {"content-type": "application/json"}}),
    ("POST", CHAT, {"content": b"", "headers": {"content-type": "application/json"}}),
    ("POST", CHAT, {"json": [1, 2, 3]}),
    ("POST", CHAT, raw("[" * 5000 + "]" * 5000)),
    ("POST", CHAT, {"json": {"messages": "hi"}}),
    ("POST", CHAT, {"json": {"messages": []}}),
    ("POST", CHAT, {"json": {"messages": [{"role": "root", "content": "hi"}]}}),
    ("POST", CHAT, {"json": {"messages": [{"role": "user", "content": [{"type": ["text"], "text": "hi"}]}]}}),
    ("POST", CHAT, {"json": {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "file:///etc/passwd"}]}]}}),
    ("POST", CHAT, raw('{"messages": [{"role": "user", "content": "a\\ud800b"}]}')),
    ("POST", DONE, raw('{"prompt": "x\\udfff"}')),
    ("POST", CHAT, {"json": {"messages": HI, "tools": [{"type": "function"}]}}),
    # numbers out of range, infinite or not numbers
    ("POST", CHAT, raw('{"messages": [{"role": "user", "content": "hi"}], "temperature": Infinity}')),
    ("POST", CHAT, raw('{"messages": [{"role": "user", "content": "hi"}], "temperature": 1e999}')),
    ("POST", CHAT, raw('{"messages": [{"role": "user", "content": "hi"}], "top_p": NaN}')),
    ("POST", CHAT, {"json": {"messages": HI, "max_tokens": 10**12}}),
    ("POST", CHAT, {"json": {"messages": HI, "max_tokens": -1}}),
    ("POST", CHAT, {"json": {"messages": HI, "n": 0}}),
    ("POST", CHAT, {"json": {"messages": HI, "seed": -5}}),
    ("POST", CHAT, {"json": {"messages": HI, "seed": 2**80}}),
    ("POST", CHAT, {"json": {"messages": HI, "logit_bias": {"0": 1e308}}}),
    ("POST", CHAT, {"json": {"messages": HI, "guidance_scale": 1e308}}),
    ("POST", DONE, {"json": {"prompt": ["hi"] * 20, "n": 16, "max_tokens": 1}}),
    ("POST", DONE, {"json": {"prompt": "x", "regex": "(a" * 300}}),
    ("POST", IMAGES, raw('{"prompt": "7", "guidance_scale": Infinity}')),
    ("POST", IMAGES, {"json": {"prompt": "7", "steps": 10**9}}),
    ("POST", IMAGES, {"json": {"prompt": "7", "n": 10**6}}),
    ("POST", IMAGES, {"json": {"prompt": "7", "size": "0x0"}}),
    ("POST", IMAGES, {"json": {"prompt": "7", "sampler": "../../etc/passwd"}}),
    ("POST", IMAGES, {"json": {"prompt": ""}}),
    # pictures that are not pictures, or far too large
    ("POST", IMAGES, {"json": {"prompt": "a red circle", "model": "shapes", "control": "%%% not base64 %%%"}}),
    ("POST", IMAGES, {"json": {"prompt": "a red circle", "model": "shapes", "control": base64.b64encode(NOT_AN_IMAGE).decode()}}),
    ("POST", IMAGES, {"json": {"prompt": "a red circle", "model": "shapes", "control": base64.b64encode(HUGE).decode()}}),
    ("POST", IMAGES, {"json": {"prompt": "", "model": "shapes", "layout": {"objects": [{"box": [2, 2, -1, 9e99]}]}}}),
    ("POST", EDITS, {"data": {"prompt": "7"}, "files": {"image": ("a.png", NOT_AN_IMAGE)}}),
    ("POST", EDITS, {"data": {"prompt": "7"}, "files": {"image": ("a.png", HUGE)}}),
    ("POST", EDITS, {"data": {"prompt": "7"}, "files": {"image": ("a.png", SEVEN), "mask": ("m.png", HUGE)}}),
    ("POST", EDITS, {"content": b"--b\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nno end",
                     "headers": {"content-type": "multipart/form-data; boundary=b"}}),
    ("POST", EDITS, {"content": b"garbage", "headers": {"content-type": "multipart/form-data"}}),
    ("POST", EDITS, {"json": {"prompt": "7", "image": "seven.png"}}),
    ("POST", EDITS, {"data": {"prompt": "7", "model": "/etc/passwd"}, "files": {"image": ("a.png", SEVEN)}}),
    ("POST", EDITS, {"data": {"prompt": "7", "model": "digits-gan"}, "files": {"image": ("a.png", SEVEN)}}),
    # size, routes, methods, hosts
    ("POST", DONE, {"json": {"prompt": "a" * (2 << 20)}}),
    ("GET", "/v1/secrets", {}),
    ("GET", CHAT, {}),
    ("DELETE", "/v1/models/digits", {}),
    ("POST", CHAT, {"json": {"messages": HI}, "headers": {"host": "evil.example"}}),
    ("POST", "/v1/embeddings", {"json": {"input": [], "model": "all-minilm-l6-v2"}}),
    ("POST", "/v1/embeddings", {"json": {"input": "hi", "model": "/etc/passwd"}}),
]


def _refused(r: httpx.Response, what) -> None:
    assert 400 <= r.status_code < 500, (what, r.status_code, r.text[:300])
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, (what, error)
    assert error["message"] and "\n" not in error["message"] and "Traceback" not in error["message"], (what, error)


def test_hostile_requests_get_one_clear_4xx_and_the_server_stays_up(server):
    assert len(HOSTILE) >= 40
    with httpx.Client(base_url=server.url, timeout=120) as http:
        for method, route, kwargs in HOSTILE:
            _refused(http.request(method, route, **kwargs), (method, route, str(kwargs)[:120]))
        # a request uvicorn itself cannot parse
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: abc\r\n\r\n")
            answer = b""
            while chunk := sock.recv(4096):  # the server closes the connection after its answer
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400") and json.loads(body)["error"]["message"]
        # still answering, and still right
        assert http.get("/health").status_code == 200
        ok = http.post(DONE, json={"prompt": "The", "max_tokens": 2, "model": "pydoc-gpt", "seed": 1})
        assert ok.status_code == 200 and ok.json()["choices"][0]["text"]


def test_wrong_or_missing_keys_get_401(tmp_path):
    from conftest import start_server

    s = start_server(create_app(ServerConfig(text_models=["pydoc-gpt"], image_models=[], api_keys=["right"])))
    try:
        tries = [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "right"},
                 {"Authorization": "Basic cmlnaHQ6"}, {"Authorization": "Bearer right right"}, {"X-API-Key": "right"}]
        for headers in tries:
            r = httpx.post(s.url + DONE, json={"prompt": "x"}, headers=headers)
            assert r.status_code == 401, headers
            _refused(r, headers)
        r = httpx.post(s.url + DONE + "?api_key=right", json={"prompt": "x"})
        assert r.status_code == 401
        r = httpx.post(s.url + DONE, json={"prompt": "The", "max_tokens": 2}, headers={"Authorization": "Bearer right"})
        assert r.status_code == 200
    finally:
        s.stop()
