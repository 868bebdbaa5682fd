"""Prompt adherence in the shapes world: read the objects back out of the pixels, check a Spec.

The checker is plain pixel analysis, not a network, so each verdict is exact and can say
why (GenEval does the same job with an object detector):
  1. a pixel is background when it is dark, otherwise the named colour nearest in hue;
  2. each colour's connected regions are objects; specks under `min_area` pixels are ignored;
  3. a region's shape comes from how its width grows from top to bottom (a triangle) and
     how much of its bounding box it fills (a square fills all of it, a circle ~79%);
  4. its size and its place from its bounding box.

    found = detect(image)    # [Found(color="red", shape="circle", size="big", x=9.5, y=16.0, area=140), ...]
    ok, why = satisfies(found, parse("a red circle to the left of a blue square"))
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from itertools import permutations

import numpy as np

from ..data.shapes import COLORS, SIZE, Spec, Want, described, relation_holds

BRIGHT = 100  # a pixel whose brightest channel is below this is background
SQUARE_FILL = 0.9  # a region filling more of its bounding box than this is a square
TRIANGLE_TAPER = 0.7  # a region whose top third is narrower than this times its bottom third is a triangle
BIG = 11  # a bounding box at least this many pixels across is "big" (small ones are 8-9, big ones 13-14)


@dataclass(frozen=True)
class Found:
    color: str
    shape: str
    size: str
    x: float  # centre of the bounding box, in pixels from the left (the same coordinates as shapes.Obj)
    y: float
    area: int


def detect(image, min_area: int = 10) -> list[Found]:
    """Objects in a PIL image (or an (H, W, 3) uint8 array), largest first."""
    from scipy import ndimage

    rgb = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.float32)  # (H, W, 3)
    bright = rgb.max(-1)  # (H, W)
    palette = np.array(list(COLORS.values()), dtype=np.float32)  # (K, 3)
    # hue only: divide out brightness, so the dim anti-aliased rim of a red circle is still red
    hue = rgb / np.maximum(bright, 1)[..., None]
    dist = ((hue[:, :, None, :] - (palette / palette.max(-1, keepdims=True))[None, None]) ** 2).sum(-1)  # (H, W, K)
    nearest = np.where(bright >= BRIGHT, dist.argmin(-1), -1)  # (H, W), -1 = background
    found = []
    for k, name in enumerate(COLORS):
        regions, n = ndimage.label(nearest == k)
        for i in range(1, n + 1):
            ys, xs = np.nonzero(regions == i)
            if len(ys) >= min_area:
                found.append(_describe(name, ys, xs))
    return sorted(found, key=lambda f: -f.area)


def _describe(color: str, ys: np.ndarray, xs: np.ndarray) -> Found:
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    widths = np.bincount(ys - ys.min(), minlength=h)  # (h,) pixels in each row, top to bottom
    third = max(1, h // 3)
    taper = widths[:third].mean() / max(widths[-third:].mean(), 1)
    fill = len(ys) / (h * w)
    shape = "triangle" if taper < TRIANGLE_TAPER else "square" if fill > SQUARE_FILL else "circle"
    size = "big" if max(h, w) >= BIG else "small"
    # the bounding box's centre, not the centroid: a triangle's centroid sits a third of the way up
    return Found(color, shape, size, (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2, len(ys))


def satisfies(found: list[Found], spec: Spec) -> tuple[bool, str]:
    """Does the picture hold exactly what the spec asks? Returns (verdict, the reason when not)."""
    want = len(spec.objects)
    if len(found) != want:
        return False, f"{len(found)} objects, not {want}"
    for order in permutations(found):  # the relation's first object is the spec's first
        mismatch = next((f"{_name(w)} is missing" for w, f in zip(spec.objects, order) if not _matches(f, w)), None)
        if mismatch:
            continue
        if spec.kind == "position" and not _on_side(order[0], spec.where):
            return False, f"the {_name(spec.objects[0])} is not on the {spec.where}"
        if spec.kind == "relation" and not relation_holds(spec.where, (order[0].x, order[0].y), (order[1].x, order[1].y)):
            return False, f"the {_name(spec.objects[0])} is not {spec.where} the {_name(spec.objects[1])}"
        return True, ""
    names = ", ".join(f"{f.size} {f.color} {f.shape}" for f in found)
    return False, f"found {names}"


def _matches(f: Found, w: Want) -> bool:
    return f.shape == w.shape and w.color in (None, f.color) and w.size in (None, f.size)


def _on_side(f: Found, side: str | None, margin: float = 1.0) -> bool:
    half = SIZE / 2
    return {"left": f.x < half - margin, "right": f.x > half + margin,
            "top": f.y < half - margin, "bottom": f.y > half + margin}[side]


def _name(w: Want) -> str:
    return f"{described(w)} {w.shape}".strip()


def adherence(images, specs: list[Spec]) -> dict[str, float]:
    """The share of images that satisfy their spec: per kind, and "overall" (the mean over images)."""
    per_kind = defaultdict(list)
    for image, spec in zip(images, specs, strict=True):
        per_kind[spec.kind].append(satisfies(detect(image), spec)[0])
    scores = {kind: float(np.mean(v)) for kind, v in per_kind.items()}
    scores["overall"] = float(np.mean([ok for v in per_kind.values() for ok in v]))
    return scores
