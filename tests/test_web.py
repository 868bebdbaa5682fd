"""The web UI end to end: headless Debian Chromium, driven by Playwright, against a real genlab server.

It types a prompt and watches the answer stream in, turns on the token-probability view,
generates an image with live previews, scrubs the trajectory, and saves screenshots
under the test's output folder (pytest's tmp_path, printed at the end).
"""

import base64
import shutil
import time

import httpx
import pytest

sync_api = pytest.importorskip("playwright.sync_api")

# Debian's chromium: Playwright cannot download its own browser here (make install puts it in place).
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def page(server, tmp_path_factory):
    assert CHROMIUM, "Debian's chromium is not installed: run `make install` (apt-get install chromium)"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.errors = []
        page.on("pageerror", lambda e: page.errors.append(str(e)))
        page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))
        page.goto(server.url + "/")
        page.wait_for_selector("body[data-ready='1']", timeout=60_000)
        yield page
        browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    folder = tmp_path_factory.mktemp("web-screenshots")
    yield folder
    print(f"\nweb UI screenshots: {folder}")


def test_chat_streams_and_shows_token_probabilities(page, shots):
    assert page.locator("#health").inner_text() == "ready"
    page.fill("#max-tokens", "60")
    page.fill("#text-seed", "7")
    page.fill("#chat-input", "Name three colours and say why people like them.")
    page.press("#chat-input", "Enter")
    reply = page.locator(".msg.assistant").last
    lengths, deadline = [], time.time() + 120
    while time.time() < deadline and reply.get_attribute("data-done") is None:
        lengths.append(len(reply.inner_text()))
        time.sleep(0.03)
    assert reply.get_attribute("data-done") == "1"
    growth = sorted(set(lengths))
    assert len(growth) >= 4, f"the text did not arrive piece by piece: {growth}"  # streamed, not in one go
    text = reply.inner_text()
    assert len(text) > 20 and "error" not in (reply.get_attribute("class") or "")
    stats = page.inner_text("#text-stats")
    assert "time to first token" in stats and "tokens/s" in stats and ("done" in stats or "cut off at max tokens" in stats)
    page.screenshot(path=str(shots / "1-chat.png"))

    page.check("#show-probs")
    assert "probs" in page.get_attribute("#chat-log", "class")
    tokens = reply.locator(".tok")
    assert tokens.count() > 5
    probabilities = [float(tokens.nth(i).get_attribute("data-p")) for i in range(tokens.count())]
    assert all(0 < p <= 1 for p in probabilities) and min(probabilities) < 0.99  # a real distribution
    tokens.nth(2).hover()
    popup = page.locator("#token-popup")
    popup.wait_for(state="visible")
    assert popup.locator("tr").count() == 5 and "chosen" in popup.inner_text()
    page.screenshot(path=str(shots / "2-token-probabilities.png"))
    assert page.errors == []


def test_chat_reports_speculative_guesses_kept(page):
    """Speculative decoding is on by default; the page says how many guessed tokens the model kept."""
    page.click("#chat-clear")  # a new conversation
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "30")
    page.fill("#chat-input", "Repeat exactly: one two three four five six seven eight nine ten")
    page.press("#chat-input", "Enter")
    page.wait_for_selector(".msg.assistant[data-done]", timeout=120_000)
    reply = page.locator(".msg.assistant").last
    stats = page.inner_text("#text-stats")
    kept, guessed = (int(x) for x in stats.split(" guessed tokens kept")[0].split(" · ")[-1].split(" of "))
    assert 0 < kept <= guessed, stats
    assert "seven eight nine" in reply.inner_text()
    page.fill("#temperature", "0.7")


def test_image_previews_and_trajectory(page, server, shots):
    page.fill("#image-prompt", "a red circle above a blue square")
    page.select_option("#image-model", "shapes")
    page.fill("#steps", "12")
    page.fill("#image-seed", "3")
    page.click("#image-go")
    page.wait_for_selector("#image-preview[data-done='1']", timeout=120_000)
    stats = page.inner_text("#image-stats")
    assert "s/step" in stats and "s/image" in stats and "seed 3" in stats
    slider = page.locator("#trajectory")
    assert slider.is_enabled() and slider.get_attribute("max") == "12"  # 12 previews and the final picture
    final = page.get_attribute("#image-preview", "src")
    api = httpx.post(server.url + "/v1/images/generations",
                     json={"prompt": "a red circle above a blue square", "model": "shapes", "steps": 12, "seed": 3},
                     timeout=120).json()
    assert final == "data:image/png;base64," + api["data"][0]["b64_json"]  # what the browser shows = the API's PNG
    page.screenshot(path=str(shots / "3-image.png"))

    slider.fill("0")  # scrub back to the first step: the model's first guess of the picture
    assert page.inner_text("#image-step") == "step 1/12"
    first_x0 = page.get_attribute("#image-preview", "src")
    page.check("input[name=view][value=xt]")
    first_xt = page.get_attribute("#image-preview", "src")
    assert first_x0 != first_xt != final and len(base64.b64decode(first_xt.split(",")[1])) > 100
    page.screenshot(path=str(shots / "4-trajectory-step-1-xt.png"))
    assert page.errors == []


def test_boxes_drawn_on_the_page_steer_the_picture(page, server, shots):
    """Drag a box on the control pad: the page sends it as `layout`, and shows the API's PNG for that layout."""
    from PIL import Image
    import io

    from genlab.data.layouts import Layout, placed
    from genlab.eval.shapes import detect

    page.click("#control-pad summary")
    page.select_option("#control-mode", "boxes")
    page.select_option("#box-color", "green")
    page.select_option("#box-shape", "triangle")
    pad = page.locator("#control-canvas").bounding_box()
    at = lambda x, y: (pad["x"] + x * pad["width"] / 32, pad["y"] + y * pad["height"] / 32)  # noqa: E731  picture pixels
    page.mouse.move(*at(3.5, 4.5))
    page.mouse.down()
    page.mouse.move(*at(10, 10))
    page.mouse.move(*at(16.5, 17.5))
    page.mouse.up()
    assert page.inner_text("#control-list") == "green triangle [3, 4, 17, 18]"
    page.select_option("#image-model", "shapes")
    page.fill("#steps", "30")
    page.fill("#image-seed", "1")
    page.evaluate("document.getElementById('image-preview').removeAttribute('data-done')")
    page.click("#image-go")
    page.wait_for_selector("#image-preview[data-done='1']", timeout=120_000)
    final = page.get_attribute("#image-preview", "src")
    layout = {"objects": [{"color": "green", "shape": "triangle", "box": [3, 4, 17, 18]}]}
    api = httpx.post(server.url + "/v1/images/generations",
                     json={"prompt": "", "layout": layout, "model": "shapes", "steps": 30, "seed": 1}, timeout=120).json()
    assert final == "data:image/png;base64," + api["data"][0]["b64_json"]
    picture = Image.open(io.BytesIO(base64.b64decode(api["data"][0]["b64_json"])))
    assert placed(detect(picture), Layout.parse(layout)) == [True]  # a green triangle, in the box
    page.screenshot(path=str(shots / "5-layout.png"))
    page.click("#control-clear")
    assert "drag on the square" in page.inner_text("#control-list")
    assert page.errors == []


def test_edit_the_picture_shown_and_compare_texts(page, server, shots):
    """The page's edit button sends the picture it shows to /v1/images/edits (img2img), and its
    compare-texts panel shows /v1/embeddings' cosine similarities."""
    import io

    from PIL import Image

    page.fill("#image-prompt", "a handwritten 7")
    page.select_option("#image-model", "digits")
    page.fill("#steps", "8")
    page.fill("#image-seed", "2")
    page.evaluate("document.getElementById('image-preview').removeAttribute('data-done')")
    page.click("#image-go")
    page.wait_for_selector("#image-preview[data-done='1']", timeout=120_000)
    seven = base64.b64decode(page.get_attribute("#image-preview", "src").split(",")[1])
    page.fill("#image-prompt", "a handwritten 1")
    page.fill("#edit-strength", "0.7")
    page.click("#edit-go")
    page.wait_for_selector("#image-preview[data-edited]", timeout=120_000)
    edited = page.get_attribute("#image-preview", "src")
    api = httpx.post(server.url + "/v1/images/edits", files={"image": ("seven.png", seven, "image/png")}, timeout=120,
                     data={"prompt": "a handwritten 1", "model": "digits", "strength": "0.7", "steps": "8", "seed": "2"}).json()
    # the page's edit = the API's: the same pixels (the receipts differ only in the digest of the picture
    # sent: the page re-encodes the one it shows)
    pictures = [Image.open(io.BytesIO(base64.b64decode(b))) for b in (edited.split(",")[1], api["data"][0]["b64_json"])]
    assert pictures[0].tobytes() == pictures[1].tobytes()
    assert "edited" in page.inner_text("#image-step")

    page.click("#embed-pad summary")
    page.click("#embed-go")
    page.wait_for_selector("#embed-table[data-done='1']", timeout=60_000)
    rows = [[c.inner_text() for c in r.locator("td").all()] for r in page.locator("#embed-table tr").all()]
    assert rows[0][0] == "384 dimensions" and rows[1][1] == "1.00"
    cat_kitten, cat_stocks = float(rows[1][2]), float(rows[1][3])
    assert cat_kitten > cat_stocks + 0.3  # the cat is nearer the kitten than the stock market
    page.screenshot(path=str(shots / "6-edit-and-embeddings.png"))
    assert page.errors == []
