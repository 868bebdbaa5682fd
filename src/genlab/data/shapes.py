"""The shapes world: genlab's own compositional data for text-to-image.

Every picture is 32x32 RGB on black with one or two objects. An object has a colour, a
shape, a size and a place. A `Spec` is what a caption asks for ("a red circle to the left
of a blue square"); a `Scene` is a picture that satisfies it, with every object's exact
position, so the ground truth of every image is known. Everything is a pure function of
(seed, index): any number of images, made on the fly, the same index always the same image.

    world = ShapesWorld("train", seed=0)
    scene, caption = world.example(12)       # Scene(spec=Spec(...), objects=(Obj(...), ...)), "a red circle on the left"
    image = render(scene)                    # PIL RGB, 32x32
    spec = parse("two small green squares")  # caption -> Spec, for any phrasing genlab knows
    describe(spec)                           # Spec -> its plainest caption, "two small green squares"

Held out of "train", for evaluation: some phrasings (split "heldout-phrasing") and some
colour-shape combinations ("heldout-combo"), which no training picture contains at all.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from ..errors import GenlabError

SIZE = 32  # pixels per side
COLORS = {  # name -> RGB; far enough apart that the checker tells them apart after blur
    "red": (230, 30, 30),
    "orange": (255, 140, 0),
    "yellow": (245, 235, 20),
    "green": (30, 200, 50),
    "blue": (40, 80, 255),
    "purple": (160, 40, 230),
}
SHAPES = ("circle", "square", "triangle")
RADIUS = {"small": 4.0, "big": 6.5}  # half the object's width in pixels
SIDES = ("left", "right", "top", "bottom")  # where a single object sits
RELATIONS = ("left of", "right of", "above", "below")  # where the first of two objects is, next to the second
KINDS = ("single", "color", "count", "position", "relation", "two")  # GenEval's categories, more or less
KIND_WEIGHTS = (1, 3, 2, 2, 3, 1)  # how often training draws each kind
HELDOUT_COMBOS = {("purple", "triangle"), ("orange", "circle"), ("green", "square")}

# Phrasings per kind. {c} is the colour with its size, if the spec has one ("big red"), {s} the
# shape, {side} a side, {rel} a relation, and 1 and 2 mark the two objects. The first list is
# for training, the second only for evaluation.
PHRASINGS = {
    "single": (["a {c} {s}", "one {c} {s}"],
               ["a single {c} {s}", "an image of a {c} {s}"]),
    "color": (["a {c} {s}", "one {c} {s}", "{c} {s}", "there is a {c} {s}"],
              ["a picture of a {c} {s}", "a single {c} {s} on black"]),
    "count": (["two {c} {s}s", "2 {c} {s}s"],
              ["a pair of {c} {s}s", "there are two {c} {s}s"]),
    "position": (["a {c} {s} on the {side}", "a {c} {s} at the {side}", "{c} {s} on the {side}"],
                 ["a {c} {s} in the {side} half", "there is a {c} {s} on the {side}"]),
    "relation": (["a {c1} {s1} {rel} a {c2} {s2}", "{c1} {s1} {rel} {c2} {s2}"],
                 ["there is a {c1} {s1} {rel} a {c2} {s2}", "a {c1} {s1} placed {rel} a {c2} {s2}"]),
    "two": (["a {c1} {s1} and a {c2} {s2}", "{c1} {s1} and {c2} {s2}"],
            ["a {c1} {s1} together with a {c2} {s2}", "there is a {c1} {s1} and a {c2} {s2}"]),
}
RELATION_WORDS = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}


@dataclass(frozen=True)
class Want:
    """One object a caption asks for; None means the caption does not say."""

    shape: str
    color: str | None = None
    size: str | None = None


@dataclass(frozen=True)
class Spec:
    """What a caption asks for: one or two objects, and where (a side, or a relation between them)."""

    kind: str  # one of KINDS
    objects: tuple[Want, ...]
    where: str | None = None  # a SIDES entry for "position", a RELATIONS entry for "relation"


@dataclass(frozen=True)
class Obj:
    color: str
    shape: str
    size: str
    x: float  # centre, in pixels from the left
    y: float  # centre, in pixels from the top


@dataclass(frozen=True)
class Scene:
    spec: Spec
    objects: tuple[Obj, ...]


class ShapesWorld:
    """Deterministic examples for one split: "train", "heldout-phrasing" or "heldout-combo"."""

    def __init__(self, split: str = "train", seed: int = 0):
        if split not in ("train", "heldout-phrasing", "heldout-combo"):
            raise GenlabError(f"split must be train, heldout-phrasing or heldout-combo, got {split!r}")
        self.split, self.seed = split, seed

    def example(self, index: int) -> tuple[Scene, str]:
        rng = random.Random(f"{self.split}/{self.seed}/{index}")  # str seeds hash the same in every process
        spec = self.spec(rng)
        return place(spec, rng), caption(spec, rng, heldout=self.split == "heldout-phrasing")

    def spec(self, rng: random.Random) -> Spec:
        kinds = [(k, w) for k, w in zip(KINDS, KIND_WEIGHTS) if k != "single" or self.split != "heldout-combo"]
        kind = rng.choices(*zip(*kinds))[0]  # a "single" spec names no colour, so it cannot hold a held-out combination
        while True:  # rejection: a combination this split must (not) contain
            spec = _draw_spec(kind, rng)
            combos = {(w.color, w.shape) for w in spec.objects}
            if (self.split == "heldout-combo") == bool(combos & HELDOUT_COMBOS):
                return spec


def _draw_spec(kind: str, rng: random.Random) -> Spec:
    def want(color=True):
        size = rng.choice([None, None, "small", "big"])  # half the captions leave the size open
        return Want(rng.choice(SHAPES), rng.choice(list(COLORS)) if color else None, size)

    if kind == "single":
        return Spec(kind, (want(color=False),))
    if kind in ("color", "position"):
        return Spec(kind, (want(),), rng.choice(SIDES) if kind == "position" else None)
    if kind == "count":
        return Spec(kind, (want(),) * 2)
    first, second = want(), want()
    while (second.color, second.shape) == (first.color, first.shape):
        second = want()
    return Spec(kind, (first, second), rng.choice(RELATIONS) if kind == "relation" else None)


def caption(spec: Spec, rng: random.Random, heldout: bool = False) -> str:
    """Say the spec in one of its phrasings (the held-out ones if `heldout`)."""
    return _fill(rng.choice(PHRASINGS[spec.kind][heldout]), spec)


def describe(spec: Spec) -> str:
    """The spec in its plainest training phrasing: "a red circle to the left of a blue square"."""
    return _fill(PHRASINGS[spec.kind][0][0], spec)


def _fill(template: str, spec: Spec) -> str:
    a = spec.objects[0]
    b = spec.objects[1] if len(spec.objects) > 1 else a
    text = template.format(s=a.shape, c=described(a), side=spec.where, rel=RELATION_WORDS.get(spec.where or "", ""),
                           c1=described(a), s1=a.shape, c2=described(b), s2=b.shape)
    return re.sub(r"\ba (?=[aeiou])", "an ", " ".join(text.split()))


def described(w: Want) -> str:
    """A wanted object's size and colour, as captions say them: "big red", "red", or "" for neither."""
    return " ".join(word for word in (w.size, w.color) if word)


def place(spec: Spec, rng: random.Random) -> Scene:
    """Positions that make the spec unambiguously true, with the objects at least 3 pixels apart."""
    objs = [Want(w.shape, w.color or rng.choice(_colors_for(w.shape)), w.size or rng.choice(list(RADIUS))) for w in spec.objects]
    if len(objs) == 1:
        centres = [_single(objs[0], spec.where, rng)]
    else:
        relation = spec.where or rng.choice(RELATIONS)  # count and two: any layout
        centres = _pair(objs, relation, rng)
    return Scene(spec, tuple(Obj(w.color, w.shape, w.size, x, y) for w, (x, y) in zip(objs, centres)))


def _colors_for(shape: str) -> list[str]:
    return [c for c in COLORS if (c, shape) not in HELDOUT_COMBOS]


def _single(w: Want, side: str | None, rng: random.Random) -> tuple[float, float]:
    lo, hi = RADIUS[w.size] + 1, SIZE - RADIUS[w.size] - 1
    third = SIZE / 3 + 0.5  # a named side puts the centre well inside that third of the picture
    x = rng.uniform(lo, third) if side == "left" else rng.uniform(SIZE - third, hi) if side == "right" else rng.uniform(lo, hi)
    y = rng.uniform(lo, third) if side == "top" else rng.uniform(SIZE - third, hi) if side == "bottom" else rng.uniform(lo, hi)
    return x, y


def _pair(objs: list[Want], relation: str, rng: random.Random) -> list[tuple[float, float]]:
    """Two centres with the first `relation` the second: 3+ pixels apart along that axis, and
    displaced more along it than across it."""
    ra, rb = RADIUS[objs[0].size] + 1, RADIUS[objs[1].size] + 1
    gap = ra + rb + 1
    first_low = relation in ("left of", "above")  # the first object has the smaller coordinate
    lo_r, hi_r = (ra, rb) if first_low else (rb, ra)
    low = rng.uniform(lo_r, SIZE - hi_r - gap)
    high = rng.uniform(low + gap, SIZE - hi_r)
    a, b = (low, high) if first_low else (high, low)
    while True:  # across the axis: anywhere, as long as the relation stays the dominant direction
        a2, b2 = rng.uniform(ra, SIZE - ra), rng.uniform(rb, SIZE - rb)
        if abs(a2 - b2) < abs(a - b) - 1:
            break
    horizontal = relation in ("left of", "right of")
    return [(a, a2), (b, b2)] if horizontal else [(a2, a), (b2, b)]


def relation_holds(relation: str | None, a: tuple[float, float], b: tuple[float, float], margin: float = 2.0) -> bool:
    """Is the object centred at `a` `relation` the one at `b`? Displaced that way by more than
    `margin` pixels, and more along that axis than across it. The checker uses this too."""
    dx, dy = a[0] - b[0], a[1] - b[1]
    return {"left of": -dx > margin and abs(dx) > abs(dy),
            "right of": dx > margin and abs(dx) > abs(dy),
            "above": -dy > margin and abs(dy) > abs(dx),
            "below": dy > margin and abs(dy) > abs(dx)}[relation]


def render(scene: Scene, scale: int = 4):
    """Draw at `scale` times the size and shrink, so edges are anti-aliased as in a photo."""
    from PIL import Image, ImageDraw

    big = Image.new("RGB", (SIZE * scale, SIZE * scale))
    draw = ImageDraw.Draw(big)
    for o in scene.objects:
        _draw(draw, o, scale, COLORS[o.color])
    return big.resize((SIZE, SIZE), Image.Resampling.BOX)


def coverage(scene: Scene, cells: int, scale: int = 4) -> list:
    """How much of every cell of a cells x cells grid each object covers: one (cells, cells)
    array in [0, 1] per object, the later object over the earlier as render() draws them.
    With cells = 8, a cell is what one latent position of the VAE sees."""
    import numpy as np
    from PIL import Image, ImageDraw

    masks = []
    for o in scene.objects:
        big = Image.new("L", (SIZE * scale, SIZE * scale))
        _draw(ImageDraw.Draw(big), o, scale, 255)
        masks.append(np.asarray(big.resize((cells, cells), Image.Resampling.BOX), dtype=np.float32) / 255)
    above = np.zeros((cells, cells), np.float32)  # what the later objects cover
    for i in reversed(range(len(masks))):
        masks[i], above = masks[i] * (1 - above), above + masks[i] * (1 - above)
    return masks


def _draw(draw, o: Obj, scale: int, fill) -> None:
    x, y, r = o.x * scale, o.y * scale, RADIUS[o.size] * scale
    if o.shape == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    elif o.shape == "square":
        draw.rectangle([x - r, y - r, x + r, y + r], fill=fill)
    else:  # a triangle pointing up, as wide as it is tall
        draw.polygon([(x, y - r), (x + r, y + r), (x - r, y + r)], fill=fill)


# --- reading captions back -----------------------------------------------------------------

_COUNT = r"(?:(?P<count>a pair of|two|2|a|an|one|single|a single)\s+)?"
_OBJECT = re.compile(_COUNT + r"(?:(?P<size>small|big)\s+)?(?:(?P<color>" + "|".join(COLORS) + r")\s+)?"
                     r"(?P<shape>" + "|".join(SHAPES) + r")(?P<plural>s)?\b")
_SIDE = re.compile(r"\b(?:on|at|in) the (?P<side>left|right|top|bottom)\b")
_RELATION = re.compile(r"\b(?P<rel>to the left of|left of|to the right of|right of|above|below)\b")


def parse(text: str, first_two: bool = False) -> Spec:
    """Read a caption in the shapes vocabulary back into a Spec. Raises GenlabError, naming the
    vocabulary, when the text asks for nothing this world can draw. `first_two` reads a text
    that names more than two shapes as its first two (for an LLM that got carried away)."""
    t = " ".join(re.sub(r"[^a-z0-9 ]", " ", text.lower()).split())
    found = list(_OBJECT.finditer(t))
    found = found[:2] if first_two else found
    if not found or len(found) > 2:
        raise GenlabError(f"{text!r} names {'no' if not found else len(found)} shapes; the shapes model draws one or two of "
                          f"{', '.join(SHAPES)} in {', '.join(COLORS)} (small or big), e.g. 'a red circle to the left of a blue square'")
    wants = [Want(m["shape"], m["color"], m["size"]) for m in found]
    first = found[0]
    if len(found) == 1:
        many = first["plural"] or first["count"] in ("two", "2", "a pair of")
        if many:
            return Spec("count", (wants[0],) * 2)
        side = _SIDE.search(t, first.end())
        if side:
            return Spec("position", (wants[0],), side["side"])
        return Spec("color" if wants[0].color else "single", (wants[0],))
    rel = _RELATION.search(t[first.end():found[1].start()])
    if rel:
        return Spec("relation", tuple(wants), rel["rel"].removeprefix("to the ").strip())
    return Spec("two", tuple(wants))
