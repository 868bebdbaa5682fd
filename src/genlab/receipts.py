"""Receipts: how an output was made, kept inside the output, so that anyone can make it again.

Every PNG genlab writes (the CLI, the Python API's images, the server) carries two PNG text chunks:
- `parameters`: AUTOMATIC1111's line, which image viewers and A1111's "PNG Info" tab read:
      a red circle
      Negative prompt: blurry
      Steps: 20, Sampler: dpmpp, CFG scale: 3.0, Seed: 7, Size: 32x32, Model hash: 1f2e3d4c5b, Model: shapes, Version: genlab 0.1.0
- `genlab`: the full record as JSON: the model and a SHA-256 digest of its weight files, the
  prompt, negative prompt, seed, sampler, steps, guidance, size, adapter and scale, and genlab's version.
Text carries the same record: `genlab text --json` has a "record", and the server's answers a
`record` field and a `system_fingerprint` naming the weights' digest. `genlab replay FILE`
(cli/replay.py) runs the record again and checks that the output is the same, byte for byte.

    from genlab.receipts import read_record
    read_record("seven.png")["seed"]
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from genlab import __version__
from genlab.errors import GenlabError

WEIGHT_FILES = (".safetensors", ".gguf", ".bin", ".pt", ".onnx", ".data")  # what decides the numbers; not READMEs
_digests: dict[tuple, str] = {}


def weights_digest(path: str | Path | None) -> str | None:
    """SHA-256 over a model's weight files (a file, or every weight file under a folder, by relative path).
    Cached per process by size and modification time: hashing SmolLM2's GGUF takes ~0.2 s once."""
    if path is None:
        return None
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(WEIGHT_FILES))
    key = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if key not in _digests:
        h = hashlib.sha256()
        for f in files:
            h.update(f.relative_to(path).as_posix().encode() if f != path else b"")
            with open(f, "rb") as stream:
                for block in iter(lambda: stream.read(1 << 20), b""):
                    h.update(block)
        _digests[key] = h.hexdigest()
    return _digests[key]


def bytes_digest(data) -> str | None:
    """SHA-256 of an input picture (a file, PNG bytes or an upload), so a record names it without holding it."""
    if data is None:
        return None
    if hasattr(data, "getvalue"):
        data = data.getvalue()
    elif not isinstance(data, bytes):
        data = Path(data).expanduser().read_bytes()
    return hashlib.sha256(data).hexdigest()


# -- images ----------------------------------------------------------------------------------------------

def image_record(gen, request, index: int, size: tuple[int, int]) -> dict:
    """The record of picture `index` of `request` (already filled with the model's defaults) from ImageGenerator `gen`."""
    record = {"genlab": __version__, "kind": "image", "model": model_id(gen.name, gen.folder), "weights": weights_digest(gen.folder),
              "prompt": request.prompt, "negative_prompt": request.negative_prompt, "seed": request.seed,
              "sampler": request.sampler, "steps": request.steps, "guidance": request.guidance if gen.pipeline else gen.guidance(request), "eta": request.eta,
              "size": f"{size[0]}x{size[1]}", "n": request.n, "index": index,
              "adapter": gen.adapter, "adapter_weights": weights_digest(gen.adapter), "adapter_scale": gen.adapter_scale}
    if request.init_image is not None:  # an edit: the pictures are named by their digests
        record.update(strength=request.strength, init_image=_named(request.init_image), mask=_named(request.mask))
    if request.layout is not None or request.control is not None:
        record.update(layout=request.layout.to_json() if request.layout is not None else None,
                      control=_named(request.control), control_scale=request.control_scale)
    return record


def model_id(name: str, folder) -> str:
    """How replay finds the model again: a bundled name, else the folder's full path."""
    from genlab.registry import BUNDLED

    return name if name in BUNDLED or folder is None else str(Path(folder).resolve())


def _named(picture) -> dict | None:
    """An input picture by its digest only: the same request gives the same PNG bytes whether the
    picture came as a file (CLI) or an upload (server); replay is handed the file again."""
    return None if picture is None else {"sha256": bytes_digest(picture)}


def parameters_line(record: dict) -> str:
    """AUTOMATIC1111's `parameters` text: the prompt, the negative prompt, then `Key: value` pairs."""
    lines = [record.get("prompt") or ""]
    if record.get("negative_prompt"):
        lines.append(f"Negative prompt: {record['negative_prompt']}")
    pairs = {"Steps": record.get("steps"), "Sampler": record.get("sampler"), "CFG scale": record.get("guidance"),
             "Seed": record.get("seed"), "Size": record.get("size"),
             "Model hash": (record.get("weights") or "")[:10] or None, "Model": record.get("model"),
             "Denoising strength": record.get("strength"), "Lora": record.get("adapter") and Path(record["adapter"]).name,
             "Lora weight": record.get("adapter") and record.get("adapter_scale"), "Version": f"genlab {record['genlab']}"}
    lines.append(", ".join(f"{k}: {v}" for k, v in pairs.items() if v is not None))
    return "\n".join(lines)


def attach(image, record: dict):
    """Give a PIL image its receipt: saved as PNG (by genlab or by `image.save`), it carries the record."""
    image.info.update(parameters=parameters_line(record), genlab=json.dumps(record, ensure_ascii=False, sort_keys=True))
    if type(image) is _image_class():
        image.__class__ = _receipted_class()
    return image


def png_info(image):
    """The PNG text chunks for an image's receipt (None if it has none)."""
    from PIL.PngImagePlugin import PngInfo

    if "genlab" not in image.info:
        return None
    info = PngInfo()
    info.add_text("parameters", image.info["parameters"])
    info.add_text("genlab", image.info["genlab"])
    return info


def _image_class():
    from PIL import Image

    return Image.Image


_RECEIPTED = None


def _receipted_class():
    """A PIL Image whose PNG saves write its receipt, so the Python API's `img.save("x.png")` keeps it too."""
    global _RECEIPTED
    if _RECEIPTED is None:
        from PIL import Image

        class ReceiptedImage(Image.Image):
            def save(self, fp, format=None, **params):
                if "pnginfo" not in params:
                    params["pnginfo"] = png_info(self)
                return super().save(fp, format, **params)

        _RECEIPTED = ReceiptedImage
    return _RECEIPTED


# -- text ------------------------------------------------------------------------------------------------

def text_record(gen, params, choices: list[dict]) -> dict:
    """The record of text generations by TextGenerator `gen` with SamplingParams `params`: one entry per
    choice, with its input ({"prompt"} or {"messages"}, "system", "raw", "steps") and the seed it used."""
    import dataclasses

    sampling = {k: v for k, v in dataclasses.asdict(params).items() if k not in ("grammar_text", "top_logprobs", "seed")}
    sampling["logit_bias"] = {str(k): v for k, v in (params.logit_bias or {}).items()}  # JSON keys are strings
    from genlab.registry import BUNDLED

    model = gen.model_name if gen.model_name in BUNDLED or not Path(gen.model_name).expanduser().exists() \
        else str(Path(gen.model_name).expanduser().resolve())  # a bundled name or hub id as is; a path made absolute
    return {"genlab": __version__, "kind": "text", "model": model, "weights": weights_digest(gen.weights_path),
            "engine": gen.engine, "device": str(gen.device), "dtype": gen.dtype,
            "adapter": gen.adapter, "adapter_weights": weights_digest(gen.adapter), "sampling": sampling,
            "choices": choices}


def fingerprint(gen) -> str:
    """OpenAI's system_fingerprint: what would change the answers to the same request (version, weights)."""
    return f"genlab-{__version__}-{(weights_digest(gen.weights_path) or 'none')[:12]}"


# -- reading ---------------------------------------------------------------------------------------------

def read_record(path: str | Path) -> dict:
    """The record in a PNG genlab wrote, or in a JSON file (`genlab text --json`, a saved server answer)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise GenlabError(f"{str(path)!r} is not a file; give a PNG or JSON file that genlab wrote")
    if path.suffix.lower() == ".png":
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:  # the text chunks come with the header; the pixels are not decoded
                text = im.info.get("genlab")
        except (OSError, UnidentifiedImageError) as e:
            raise GenlabError(f"cannot read {path}: {e}") from None
        if not text:
            raise GenlabError(f"{path} holds no genlab record (a PNG chunk named genlab); was it written by genlab?")
        return json.loads(text)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GenlabError(f"{path} is neither a PNG nor a JSON file genlab wrote: {e}") from None
    record = data.get("record") if isinstance(data, dict) else None
    if not isinstance(record, dict) or "kind" not in record:
        raise GenlabError(f"{path} holds no genlab record (a \"record\" field, as genlab text --json writes)")
    return record
