"""Access control of `genlab serve`: API keys, CORS, and refusing to serve the network without a key.

A real loopback server with two keys: every /v1 route wants one as a Bearer token (the openai
SDK sends its api_key so), /health and the web page stay open, and the web page asks for the
key once and keeps it.
"""

import os
import shutil
import subprocess
import sys

import httpx
import pytest

from genlab.errors import GenlabError
from genlab.server.app import ServerConfig, create_app

openai = pytest.importorskip("openai")
KEYS = ["key-one", "key-two"]
ORIGIN = "https://app.example"


@pytest.fixture(scope="module")
def keyed():
    from conftest import start_server

    s = start_server(create_app(ServerConfig(text_models=["pydoc-gpt"], image_models=["digits"], api_keys=KEYS,
                                             cors_origins=[ORIGIN])))
    yield s
    s.stop()


def test_every_v1_route_wants_a_key(keyed):
    assert httpx.get(keyed.url + "/health").status_code == 200  # open: load balancers probe it
    assert httpx.get(keyed.url + "/").status_code == 200  # the web page itself
    for method, route in (("GET", "/v1/models"), ("POST", "/v1/completions"), ("POST", "/v1/images/generations"),
                          ("POST", "/v1/images/edits"), ("GET", "/v1/genlab/stats"), ("POST", "/v1/nothing")):
        r = httpx.request(method, keyed.url + route, json={"prompt": "x"})
        assert r.status_code == 401, (route, r.text)
        assert r.json()["error"]["code"] == "invalid_api_key" and "Authorization: Bearer" in r.json()["error"]["message"]
        assert r.headers["www-authenticate"] == "Bearer"
    for header in ("Bearer key-three", "Bearer key-one2", "Basic key-one", "key-one"):
        r = httpx.get(keyed.url + "/v1/models", headers={"Authorization": header})
        assert r.status_code == 401 and "incorrect API key" in r.json()["error"]["message"], header


def test_the_sdk_with_a_key(keyed):
    for key in KEYS:
        client = openai.OpenAI(base_url=keyed.url + "/v1", api_key=key, max_retries=0, timeout=60)
        assert {m.id for m in client.models.list()} == {"pydoc-gpt", "digits", "all-minilm-l6-v2"}
        assert client.completions.create(model="pydoc-gpt", prompt="The for", max_tokens=4, seed=1).choices[0].text
    with pytest.raises(openai.AuthenticationError, match="incorrect API key"):
        openai.OpenAI(base_url=keyed.url + "/v1", api_key="wrong", max_retries=0).models.list()


def test_cors_only_for_the_named_origins(keyed, server):
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    r = httpx.options(keyed.url + "/v1/chat/completions", headers=preflight)  # a preflight carries no key
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    r = httpx.options(keyed.url + "/v1/chat/completions", headers=dict(preflight, Origin="https://evil.example"))
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
    r = httpx.get(keyed.url + "/v1/models", headers={"Origin": ORIGIN, "Authorization": "Bearer key-one"})
    assert r.headers["access-control-allow-origin"] == ORIGIN
    # without --cors-origin there is no CORS at all: a browser on another site cannot read the answers
    r = httpx.get(server.url + "/v1/models", headers={"Origin": ORIGIN})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_serving_beyond_loopback_needs_a_key():
    with pytest.raises(GenlabError, match="needs an API key: give --api-key KEY or set GENLAB_API_KEY"):
        ServerConfig(host="0.0.0.0")
    assert ServerConfig(host="0.0.0.0", api_keys=["k"]).api_keys == ["k"]
    with pytest.raises(GenlabError, match="cannot be empty"):
        ServerConfig(api_keys=[" "])
    env = {k: v for k, v in os.environ.items() if k != "GENLAB_API_KEY"}
    r = subprocess.run([sys.executable, "-m", "genlab", "serve", "--host", "0.0.0.0", "--no-text", "--image-model", "digits"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "needs an API key" in r.stderr, r.stderr


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_the_web_page_asks_for_the_key_once(keyed):
    sync_api = pytest.importorskip("playwright.sync_api")
    assert CHROMIUM, "Debian's chromium is not installed: run `make install`"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        asked = []
        page.on("dialog", lambda d: (asked.append(d.message), d.accept("key-two")))
        page.goto(keyed.url + "/")
        page.wait_for_selector("body[data-ready='1']", timeout=60_000)
        assert asked == ["This server needs an API key:"]
        page.fill("#chat-input", "The for statement")
        page.press("#chat-input", "Enter")  # the page's own requests carry the key it kept
        page.wait_for_selector(".msg.assistant[data-done='1']", timeout=60_000)
        page.reload()
        page.wait_for_selector("body[data-ready='1']", timeout=60_000)
        assert len(asked) == 1  # kept across reloads
        browser.close()
