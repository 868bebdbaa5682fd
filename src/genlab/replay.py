"""Replay: make an output again from its receipt (receipts.py) and check that it is the same, byte for byte.

    from genlab.replay import replay
    print(replay("seven.png").line())      # seven.png: the same 412 bytes, made again by digits in 0.21 s

It first checks that the model's weights (and adapter's) are the ones the receipt names: if they
changed since, the output cannot be expected to match, and replay says so instead of running.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from genlab.errors import GenlabError
from genlab.receipts import bytes_digest, read_record, weights_digest


@dataclasses.dataclass
class Replayed:
    path: Path
    model: str
    same: bool
    detail: str  # what was compared, or how it differs
    seconds: float

    def line(self) -> str:
        verdict = "identical" if self.same else "DIFFERENT"
        return f"{self.path.name}: {verdict}, {self.detail} (made again by {Path(self.model).name} in {self.seconds:.2f} s)"


class WeightsChanged(GenlabError):
    """The receipt's weights are not the ones installed now: the output cannot be reproduced."""


def replay(path: str | Path, device: str = "auto", **pictures) -> Replayed:
    """`pictures`: the input pictures an edit or a sketch was made from (init_image=, mask=, control=)."""
    path = Path(path).expanduser()
    record = read_record(path)
    start = time.perf_counter()
    if record.get("kind") == "image":
        same, detail = _image(path, record, device, {k: v for k, v in pictures.items() if v is not None})
    elif record.get("kind") == "text":
        same, detail = _text(path, record)
    else:
        raise GenlabError(f"{path} holds a record of kind {record.get('kind')!r}; replay knows image and text")
    return Replayed(path, record["model"], same, detail, time.perf_counter() - start)


def _check_weights(record: dict, what: str, now: str | None, then_key: str = "weights") -> None:
    then = record.get(then_key)
    if then and now != then:
        raise WeightsChanged(f"the weights of {what} have changed since this output was made (digest {then[:10]} then, "
                             f"{(now or 'missing')[:10]} now), so it cannot be made again exactly")


def _picture(record: dict, key: str, pictures: dict):
    """An input picture the record names by digest (an edit's init image or mask, a sketch): the file given for it."""
    named = record.get(key)
    if named is None:
        return None
    flag = "--" + key.replace("_", "-")
    path = pictures.get(key)
    if path is None:
        raise GenlabError(f"this output was made from a {key} picture (sha256 {named['sha256'][:10]}); give that "
                          f"file with {flag} FILE", key)
    if bytes_digest(path) != named["sha256"]:
        raise GenlabError(f"{path} is not the {key} picture this output was made from (sha256 {named['sha256'][:10]}, "
                          f"this file's {bytes_digest(path)[:10]})", key)
    return path


def _image(path: Path, record: dict, device: str, pictures: dict) -> tuple[bool, str]:
    from genlab.image.canvas import png_bytes, sheet
    from genlab.image.generator import ImageGenerator, ImageRequest
    from genlab.registry import locate

    _check_weights(record, f"model {record['model']!r}", weights_digest(locate(record["model"], "image").path))
    if record.get("adapter"):
        _check_weights(record, f"adapter {record['adapter']!r}", weights_digest(record["adapter"]), "adapter_weights")
    gen = ImageGenerator(record["model"], device=device, adapter=record.get("adapter"),
                         adapter_scale=record.get("adapter_scale", 1.0))
    request = ImageRequest(record["prompt"], n=record["n"], sampler=record["sampler"], steps=record["steps"],
                           guidance=None if gen.config and gen.config.distilled else record["guidance"],
                           negative_prompt=record["negative_prompt"], seed=record["seed"], eta=record["eta"],
                           init_image=_picture(record, "init_image", pictures), mask=_picture(record, "mask", pictures),
                           strength=record.get("strength", 0.75), layout=record.get("layout"),
                           control=_picture(record, "control", pictures), control_scale=record.get("control_scale", 1.0))
    images = gen.run(request).images
    index = record["index"]
    picture = sheet(images if index is None else [images[index]], record.get("scale", 1))
    made, kept = png_bytes(picture), path.read_bytes()
    if made == kept:
        return True, f"{len(kept)} bytes of PNG"
    from PIL import Image

    with Image.open(path) as old:
        a, b = old.convert(picture.mode).tobytes(), picture.tobytes()
    changed = sum(x != y for x, y in zip(a, b)) if len(a) == len(b) else None
    return False, ("a picture of another size" if changed is None else
                   f"{changed} of {len(a)} pixel values differ" if changed else "the same pixels, other PNG bytes")


def _text(path: Path, record: dict) -> tuple[bool, str]:
    from genlab.autoregressive.sampling import SamplingParams
    from genlab.text.generator import TextGenerator
    from genlab.text.sources import gguf_file, resolve

    model = record["model"]
    _check_weights(record, f"model {model!r}", weights_digest(gguf_file(model) or resolve(model)))
    if record.get("adapter"):
        _check_weights(record, f"adapter {record['adapter']!r}", weights_digest(record["adapter"]), "adapter_weights")
    texts = _texts(path)
    gen = TextGenerator(model, device=record["device"], dtype=record["dtype"], engine=record["engine"],
                        adapter=record.get("adapter"))
    sampling = dict(record["sampling"], logit_bias={int(k): v for k, v in record["sampling"]["logit_bias"].items()})
    differ = []
    for choice in record["choices"]:
        inputs = {k: choice[k] for k in ("prompt", "messages", "system", "raw", "steps") if choice.get(k) is not None}
        params = SamplingParams(**sampling, seed=choice["seed"])
        text = gen.complete(**inputs, params=params).text
        if text != texts.get(choice["index"]):
            differ.append(choice["index"])
    n = len(record["choices"])
    if not differ:
        return True, f"{sum(len(t.encode()) for t in texts.values())} bytes of text in {n} choice{'s' * (n > 1)}"
    return False, f"choice {', '.join(map(str, differ))} of {n} differs"


def _texts(path: Path) -> dict[int, str]:
    """The texts a JSON file holds: `genlab text --json`'s "text", or a server answer's choices."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if "text" in data and isinstance(data["text"], str):
        return {0: data["text"]}
    choices = data.get("choices") or []
    return {c["index"]: c["message"]["content"] if "message" in c else c["text"] for c in choices}
