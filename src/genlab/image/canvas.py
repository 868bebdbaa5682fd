"""Between tensors and pictures: PNG in, PNG out, grids and trajectory strips.

Tensors are (B, C, H, W) in [-1, 1]; pictures are PIL images. Rounding is fixed
(x -> round((x + 1) * 127.5)), so the same tensor always gives the same PNG bytes.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch

from ..errors import GenlabError, check
from ..receipts import png_info
from ..store import writing


MAX_PIXELS = 4096 * 4096  # the largest picture read (init image, mask, sketch): bigger ones are refused unread


def to_pil(x: torch.Tensor) -> list:
    """(B, C, H, W) in [-1, 1] -> B PIL images ("L" for one channel, "RGB" for three)."""
    from PIL import Image

    pixels = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # (B, C, H, W)
    pixels = pixels.permute(0, 2, 3, 1).contiguous()  # (B, H, W, C)
    mode = "L" if x.shape[1] == 1 else "RGB"
    return [Image.frombytes(mode, (p.shape[1], p.shape[0]), p.squeeze(-1).numpy().tobytes()) for p in pixels]


def from_pil(im) -> torch.Tensor:
    """A PIL image ("L" or "RGB") -> (1, C, H, W) in [-1, 1]: the inverse of to_pil."""
    channels = len(im.getbands())
    t = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(im.size[1], im.size[0], channels)
    return t.permute(2, 0, 1).unsqueeze(0).float() / 127.5 - 1


def open_image(path: str | Path, what: str, mode: str = "RGB"):
    """Open a picture as a PIL image in `mode`; transparent parts become white. One clear error if it can't."""
    from PIL import Image, UnidentifiedImageError

    if hasattr(path, "seek"):
        path.seek(0)  # an upload is read more than once (its size, then its pixels)
    try:
        with warnings.catch_warnings():  # PIL's own decompression-bomb warning: the size is checked below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path if hasattr(path, "read") else Path(path).expanduser())
        with opened as im:
            # the header says the size: refuse a huge picture before decoding it (a small PNG can hold 10000x10000)
            check(im.size[0] * im.size[1] <= MAX_PIXELS, f"cannot read {what} {_source(path)}: it is {im.size[0]}x{im.size[1]} "
                  f"pixels; genlab reads pictures of at most {MAX_PIXELS // 10**6} megapixels (e.g. 4096x4096)",
                  *((what,) if what.isidentifier() else ()))
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im.convert("RGBA"))
            return im.convert(mode)
    except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as e:
        source = _source(path)
        why = "it is not a picture (PNG, JPEG, WebP, ...)" if isinstance(e, UnidentifiedImageError) else getattr(e, 'strerror', None) or e
        raise GenlabError(f"cannot read {what} {source}: {why}",
                          *((what,) if what.isidentifier() else ())) from None


def _source(path) -> str:
    return "(the uploaded picture)" if hasattr(path, "read") else repr(str(path))


def read_image(path: str | Path, size: int, channels: int, what: str = "init_image") -> torch.Tensor:
    """A picture file -> (1, C, size, size) in [-1, 1], resized to the model's resolution."""
    from PIL import Image

    im = open_image(path, what, "L" if channels == 1 else "RGB").resize((size, size), Image.Resampling.BICUBIC)
    return from_pil(im)


def read_mask(path: str | Path, size: int) -> torch.Tensor:
    """A mask file -> (1, 1, size, size) in {0, 1}; white (1) is repainted, black is kept.
    (The caller checks that the mask has the init image's size, so that the two line up.)"""
    from PIL import Image

    im = open_image(path, "mask", "L").resize((size, size), Image.Resampling.NEAREST)
    return (from_pil(im) > 0).float()  # pixel values >= 128


def save_png(im, path: Path, what: str = "--out") -> None:
    """Save a PNG, creating its folder; one clear error if the place cannot be written."""
    save_pngs([(im, path, what)])


def save_pngs(pictures: list[tuple]) -> None:
    """Save several (image, path, what) PNGs as one: all of them, or, on an error, none.

    Each is written to a temporary file next to its path first; only when every one is written
    are they renamed into place, so a failed --trajectory never leaves a lone --out behind.
    """
    import os
    import uuid

    for _, path, what in pictures:
        check(Path(path).suffix.lower() == ".png", f"{what} must end in .png, got {str(path)!r}")
    written = []  # (temporary file, final path)
    try:
        for im, path, what in pictures:
            path = Path(path).expanduser()
            with writing(path, what):
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"  # open() keeps the umask's mode
                with open(tmp, "xb") as f:
                    written.append((tmp, path))
                    im.save(f, format="PNG", pnginfo=png_info(im))
        for (tmp, path), (_, _, what) in zip(written, pictures):
            with writing(path, what):
                os.replace(tmp, path)
    finally:
        for tmp, _ in written:
            tmp.unlink(missing_ok=True)


def grid(images: list, columns: int | None = None, pad: int = 1):
    """Paste equally sized images into one picture, `columns` per row."""
    from PIL import Image

    check(images, "no images to put in a grid")
    w, h = images[0].size
    columns = columns or min(len(images), 8)
    rows = -(-len(images) // columns)
    sheet = Image.new(images[0].mode, (columns * (w + pad) - pad, rows * (h + pad) - pad), 0)
    for i, im in enumerate(images):
        sheet.paste(im, ((i % columns) * (w + pad), (i // columns) * (h + pad)))
    return sheet


def upscale(im, factor: int):
    """Nearest-neighbour enlargement: keeps tiny images (16x16 digits) crisp on screen."""
    from PIL import Image

    return im if factor <= 1 else im.resize((im.width * factor, im.height * factor), Image.Resampling.NEAREST)


def png_bytes(im) -> bytes:
    """The PNG file for a picture, with its receipt if it has one (receipts.py)."""
    buf = io.BytesIO()
    im.save(buf, format="PNG", pnginfo=png_info(im))
    return buf.getvalue()


def sheet(images: list, scale: int = 1):
    """What `genlab image` saves: the picture, or a grid of several, enlarged `scale` times,
    with the receipt of the request that made them (index None: all n; `scale` for replay)."""
    import json

    from ..receipts import attach

    out = upscale(images[0] if len(images) == 1 else grid(images), scale)
    if "genlab" in images[0].info and (len(images) > 1 or scale > 1):
        record = json.loads(images[0].info["genlab"])
        attach(out, record | {"index": None if len(images) > 1 else record["index"], "scale": scale})
    return out


def read_sketch(path: str | bytes, size: int = 32) -> torch.Tensor:
    """A sketch, edge map or mask for spatial control (diffusion/control.py; a file, or PNG bytes from the server)
    -> (size, size) in [0, 1]: light strokes or regions on a dark ground. A square picture of any size is resized;
    anything else is one line."""
    import io

    import numpy as np
    from PIL import Image

    image = open_image(io.BytesIO(path) if isinstance(path, bytes) else path, "control")
    path = "the control picture" if isinstance(path, bytes) else path
    w, h = image.size
    check(w == h and w >= 16, f"control must be a square picture of at least 16x16 pixels (it is resized to {size}x{size}); "
          f"{path} is {w}x{h}", "control")
    gray = np.asarray(image.convert("L").resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255
    if gray.mean() > 0.5:  # dark strokes on white paper: turn it round
        gray = 1 - gray
    check(gray.max() > 0.25, f"control {path} is blank: draw light strokes or regions on a dark ground (or dark on white)",
          "control")
    return torch.from_numpy(gray)
