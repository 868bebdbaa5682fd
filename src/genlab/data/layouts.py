"""Layouts: where each object of a shapes picture goes, as boxes. What spatial control reads and what it is scored on.

A layout is a list of objects, each a colour, a shape and a box [x0, y0, x1, y1] in pixels of
the 32x32 picture (x to the right, y down, x1 and y1 exclusive), as JSON:

    {"objects": [{"color": "red", "shape": "circle", "box": [2, 4, 14, 16]},
                 {"color": "blue", "shape": "square", "box": [18, 16, 30, 28]}]}

    layout = Layout.parse(text_or_dict)      # one-line errors for unknown colours, shapes, boxes off the picture
    maps = control_maps(layout)             # (CONTROL_CHANNELS, 32, 32): what the control branch reads
    ok = placed(detect(image), layout)      # per object: inside its box, right colour, right shape

Sketches, edge maps and masks (a grayscale picture: light strokes or filled regions on dark) take
the last channel of the same maps, so one control branch reads either or both.

An object may also say its size, "small" or "big" ({"color": "red", "shape": "circle", "size": "small",
"box": [2, 4, 14, 16]}): the box then says where, and the size how big the shape in it is drawn, as a
box of the size's side (HALF) around the given box's centre. The LLM's plans say both (llm_to_image.py).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import torch

from ..errors import GenlabError, check
from .shapes import COLORS, RADIUS, SHAPES, SIZE, Obj, Scene, Spec, Want, coverage, describe

# A semantic layout (--layout-classes) also learns what covers each latent position: one
# distribution per group, "nothing" first. The shapes world knows it exactly (class_maps).
LAYOUT_CLASSES = {"color": ("nothing", *COLORS), "shape": ("nothing", *SHAPES), "size": ("nothing", *RADIUS)}


def class_maps(scene: Scene, cells: int) -> torch.Tensor:
    """The share of every cell that each class covers: (7 + 4 + 3, cells, cells), each group summing to 1."""
    masks = [torch.from_numpy(m) for m in coverage(scene, cells)]
    nothing = 1 - sum(masks, torch.zeros(cells, cells))
    share = lambda attr, name: sum((m for m, o in zip(masks, scene.objects) if getattr(o, attr) == name),  # noqa: E731
                                   torch.zeros(cells, cells))
    return torch.stack([nothing if name == "nothing" else share(attr, name)
                        for attr, names in LAYOUT_CLASSES.items() for name in names])


MAX_OBJECTS = 3
MIN_BOX = 8  # pixels per side: the smallest shape the world draws is 8-9 pixels across
HALF = {"big": 7, "small": 5}  # half the side of the box a shape of each size fills: big shapes are 13-14 pixels across, small 8-9
CONTROL_CHANNELS = len(COLORS) + len(SHAPES) + 2  # colour one-hot, shape one-hot, box mask, sketch


@dataclass(frozen=True)
class Box:
    color: str
    shape: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1 and y1 exclusive

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2

    @property
    def size(self) -> str:
        """The world's size that fits the box: big when a big shape (13-14 pixels) fits inside."""
        x0, y0, x1, y1 = self.box
        return "big" if min(x1 - x0, y1 - y0) >= 2 * RADIUS["big"] + 1 else "small"


@dataclass(frozen=True)
class Layout:
    objects: tuple[Box, ...]

    @classmethod
    def parse(cls, value) -> "Layout":
        """A layout from JSON text, a dict {"objects": [...]} or a bare list of objects; GenlabError names what is wrong."""
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise GenlabError(f"layout is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})", "layout") from None
        objects = value.get("objects") if isinstance(value, dict) else value
        check(isinstance(objects, list) and 1 <= len(objects) <= MAX_OBJECTS,
              f"layout must hold 1 to {MAX_OBJECTS} objects, as {{\"objects\": [{{\"color\": \"red\", \"shape\": \"circle\", "
              f"\"box\": [x0, y0, x1, y1]}}, ...]}}", "layout")
        return cls(tuple(_box(i, o) for i, o in enumerate(objects)))

    def to_json(self) -> dict:
        return {"objects": [{"color": o.color, "shape": o.shape, "box": list(o.box)} for o in self.objects]}

    def prompt(self) -> str:
        """The plain caption of the objects, without places (the boxes say those): "a red circle and a blue square"."""
        names = [describe(Spec("color", (Want(o.shape, o.color),))) for o in self.objects]
        return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]

    def scene(self) -> Scene:
        """The scene this layout describes: each object centred in its box, at the size that fits it."""
        return Scene(Spec("two", ()), tuple(Obj(o.color, o.shape, o.size, *o.centre) for o in self.objects))


def _box(i: int, o) -> Box:
    where = f"layout object {i}"
    check(isinstance(o, dict) and {"color", "shape", "box"} <= set(o) <= {"color", "shape", "size", "box"},
          f"{where} must be {{\"color\": ..., \"shape\": ..., \"box\": [x0, y0, x1, y1]}} (and optionally \"size\": "
          f"small or big), got {json.dumps(o)[:80]}", where)
    check(o["color"] in COLORS, f"{where} has colour {o['color']!r}; the shapes model knows {', '.join(COLORS)}", where)
    check(o["shape"] in SHAPES, f"{where} has shape {o['shape']!r}; the shapes model knows {', '.join(SHAPES)}", where)
    box = o["box"]
    check(isinstance(box, list) and len(box) == 4 and all(isinstance(v, int) and not isinstance(v, bool) for v in box),
          f"{where}: box must be 4 integers [x0, y0, x1, y1], got {json.dumps(box)[:60]}", where)
    x0, y0, x1, y1 = box
    check(0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE,
          f"{where}: box {box} is outside the {SIZE}x{SIZE} picture (0 <= x0 < x1 <= {SIZE}, the same for y)", where)
    check(x1 - x0 >= MIN_BOX and y1 - y0 >= MIN_BOX,
          f"{where}: box {box} is {x1 - x0}x{y1 - y0} pixels; a shape needs at least {MIN_BOX}x{MIN_BOX}", where)
    if "size" in o:
        check(o["size"] in tuple(HALF), f"{where} has size {json.dumps(o['size'])[:20]}; sizes are small and big", where)
        x0, y0, x1, y1 = _fit(box, HALF[o["size"]])
    return Box(o["color"], o["shape"], (x0, y0, x1, y1))


def _fit(box, half: int) -> tuple[int, int, int, int]:
    """A box of side 2 * half around the centre of `box`, moved inside the picture where it would stick out."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    left = min(max(cx - half, 0), SIZE - 2 * half)
    top = min(max(cy - half, 0), SIZE - 2 * half)
    return left, top, left + 2 * half, top + 2 * half


def control_maps(layout: Layout | None, sketch: torch.Tensor | None = None) -> torch.Tensor:
    """(CONTROL_CHANNELS, 32, 32) in [0, 1]: inside each box its colour's and shape's channels and the box
    mask are 1 (a later object over an earlier one); the last channel is the sketch (1, 32, 32), if any."""
    maps = torch.zeros(CONTROL_CHANNELS, SIZE, SIZE)
    colors, shapes = list(COLORS), list(SHAPES)
    for o in layout.objects if layout else ():
        x0, y0, x1, y1 = o.box
        maps[:-1, y0:y1, x0:x1] = 0
        maps[colors.index(o.color), y0:y1, x0:x1] = 1
        maps[len(colors) + shapes.index(o.shape), y0:y1, x0:x1] = 1
        maps[-2, y0:y1, x0:x1] = 1
    if sketch is not None:
        maps[-1] = sketch.reshape(SIZE, SIZE)
    return maps


def placed(found, layout: Layout, slack: float = 2.0) -> list[bool]:
    """For each layout object: is an object of its colour and shape drawn inside its box (its bounding
    box's centre inside, its extent within `slack` pixels of the box)? Each found object counts once."""
    free = list(found)
    verdicts = []
    for o in layout.objects:
        x0, y0, x1, y1 = o.box
        match = next((f for f in free if f.color == o.color and f.shape == o.shape and x0 <= f.x <= x1 and y0 <= f.y <= y1
                      and _extent_within(f, o.box, slack)), None)
        verdicts.append(match is not None)
        if match is not None:
            free.remove(match)
    return verdicts


def _extent_within(f, box, slack: float) -> bool:
    """The found object's bounding box, from its centre and area: within the box, give or take `slack`."""
    half = (f.area ** 0.5) / 2  # a square of the same area: the circle's and triangle's extent is a little larger
    x0, y0, x1, y1 = box
    return f.x - half >= x0 - slack and f.x + half <= x1 + slack and f.y - half >= y0 - slack and f.y + half <= y1 + slack


def random_layout(rng: random.Random, objects: int | None = None, combos=None) -> Layout:
    """A layout of 1-3 objects in boxes that do not overlap (2 pixels apart): for training and held-out evaluation.
    `combos`: (colour, shape) pairs to draw from (default: all)."""
    count = objects or rng.choice((1, 2, 2, 3))
    pairs = combos or [(c, s) for c in COLORS for s in SHAPES]
    while True:
        boxes = []
        for _ in range(count):
            w = rng.randint(MIN_BOX + 1, 16)
            h = max(MIN_BOX + 1, min(16, w + rng.randint(-2, 2)))
            x0, y0 = rng.randint(0, SIZE - w), rng.randint(0, SIZE - h)
            boxes.append((x0, y0, x0 + w, y0 + h))
        if all(_apart(a, b) for i, a in enumerate(boxes) for b in boxes[:i]):
            break
    return Layout(tuple(Box(*rng.choice(pairs), b) for b in boxes))


def _apart(a, b, gap: int = 2) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]
