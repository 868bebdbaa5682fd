"""The LLM writes, diffusion draws: the two families of genlab joined in one call.

    from genlab import imagine
    result = imagine("something that looks like a traffic light", seed=0)
    result.prompt, result.image          # "a red circle above a green circle", a PIL image
    result = imagine("there is a small blue circle below a big red triangle", plan=True)
    result.plan                          # Layout: each object's colour, shape and box, written by the LLM

With plan=True (LLM-grounded diffusion, Lian et al. 2023) the LLM does not write a caption but
the picture's layout, as JSON constrained by the layout's schema (structured output), and the
control branch (diffusion/control.py) draws each object in its box: the LLM decides what goes
where, diffusion only renders it. Without plan:

1. The bundled LLM gets few-shot instructions (IDEAS below) and turns a free-form idea
   into a description in the shapes model's vocabulary (data/shapes.py).
2. shapes.parse validates it (keeping the first two shapes of a longer answer). An answer that names nothing drawable gets a second try,
   sampled at temperature 0.7; if that fails too, imagine says so in one line instead of
   drawing noise from an off-vocabulary prompt.
3. The parsed spec is said in its plainest training phrasing (shapes.describe), which the
   text-to-image model follows best, and rendered.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .errors import GenlabError
from .data.layouts import HALF, MAX_OBJECTS, Layout
from .data.shapes import COLORS, SHAPES, SIZE, Spec, describe, parse

INSTRUCTIONS = (
    "You turn an idea into a picture made of at most two simple shapes. Use only these words: "
    f"shapes {', '.join(SHAPES)}; colours {', '.join(COLORS)}; sizes small, big; places on the left, on the right, "
    "at the top, at the bottom, above, below, to the left of, to the right of. Answer with the description only."
)
IDEAS = [  # (idea, description): the few-shot examples the LLM continues
    ("the sun in a clear sky", "a big yellow circle at the top"),
    ("a tent next to a lake", "a green triangle to the left of a blue square"),
    ("two cherries", "two red circles"),
    ("a ball resting on a box", "a red circle above a purple square"),
    ("a slice of orange", "an orange triangle"),
]


@dataclass
class Imagined:
    idea: str
    llm_text: str  # what the LLM wrote
    prompt: str  # what the image model was given
    spec: Spec | None  # the caption's reading (None for a plan)
    image: object  # PIL image
    llm_seconds: float
    image_seconds: float
    plan: Layout | None = None  # the LLM's layout, with plan=True


# --- planning: the LLM writes the layout --------------------------------------------------------

PLAN_SCHEMA = {"type": "object", "required": ["objects"], "properties": {"objects": {
    "type": "array", "minItems": 1, "maxItems": MAX_OBJECTS, "items": {
        "type": "object", "required": ["color", "shape", "size", "box"], "properties": {
            "color": {"enum": list(COLORS)}, "shape": {"enum": list(SHAPES)}, "size": {"enum": list(HALF)},
            "box": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": SIZE}, "minItems": 4, "maxItems": 4}}}}}}
# the planner adapter learned the rest (boxes [x0, y0, x1, y1] on the 32x32 picture, x to the right, y down).
# The size comes before the box: the LLM copies "small" or "big" from the prompt into a word of its own, and
# the box's side follows from that word (Layout.parse fits the box to it), not from digits it must get right:
# a planner whose boxes said both where and how big drew "small" objects big in 5 of 44 held-out relations.
PLAN_INSTRUCTIONS = "Plan the picture as JSON: each object's color, shape, size and box."
SPOTS = {"left": (8, 16), "right": (24, 16), "top": (16, 8), "bottom": (16, 24), None: (16, 16)}
PAIRS = {"left of": ("left", "right"), "right of": ("right", "left"), "above": ("top", "bottom"), "below": ("bottom", "top")}


def plan_json(spec: Spec) -> dict:
    """The planner's training answer for a spec: each object where a person would put it, as a box of the big
    size at its spot (the box says where), and its size as a word ("small" or "big": how big). The LLM's box
    digits then depend only on where an object goes, and its size only on a word it copies from the prompt."""
    spots = [spec.where] if spec.kind == "position" else list(PAIRS[spec.where or "left of"]) if len(spec.objects) == 2 else [None]
    objects, h = [], HALF["big"]
    for want, spot in zip(spec.objects, spots):
        x, y = SPOTS[spot]
        objects.append({"color": want.color or "red", "shape": want.shape, "size": want.size or "big",
                        "box": [x - h, y - h, x + h, y + h]})
    return {"objects": objects}


def plan_of(spec: Spec) -> Layout:
    """The layout a spec asks for (plan_json, each box fitted to its size): what the planner should write."""
    return Layout.parse(plan_json(spec))


PLANNER = "shapes-planner"  # the bundled LoRA adapter that teaches SmolLM2 to plan (src/genlab/weights/; docs/control.md)


def plan_data(path: str, count: int = 1500, seed: int = 0) -> None:
    """The planner's training data, JSONL chat: shapes-world training captions (their training phrasings
    and colour-shape pairs only) and the layouts they mean (plan_of). Reproduces examples/planner/train.jsonl:
        python -c "from genlab.llm_to_image import plan_data; plan_data('examples/planner/train.jsonl')"
    """
    import json

    from .data.shapes import ShapesWorld

    world, lines = ShapesWorld("train", seed=seed), []
    for i in range(count):
        scene, caption = world.example(i)
        reply = json.dumps(plan_json(scene.spec))
        lines.append(json.dumps({"messages": [{"role": "system", "content": PLAN_INSTRUCTIONS}, {"role": "user", "content": caption},
                                              {"role": "assistant", "content": reply}]}))
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def planner(model: str = "smollm2-135m-instruct"):
    """The bundled SmolLM2 with the planner adapter merged in: a TextGenerator that writes layouts."""
    from .store import bundled_weights
    from .text.generator import TextGenerator

    return TextGenerator(model, adapter=str(bundled_weights(PLANNER, "genlab finetune text --data examples/planner/train.jsonl")))


def write_plan(idea: str, text_generator, seed: int = 0) -> tuple[str, Layout]:
    """Ask the LLM (with the planner adapter: planner()) for the layout of `idea`, as JSON under PLAN_SCHEMA;
    returns its text and the Layout."""
    if not idea or not idea.strip():
        raise GenlabError("the prompt is empty; describe what to draw, e.g. 'there is a small blue circle below a big red triangle'")
    messages = [{"role": "system", "content": PLAN_INSTRUCTIONS}, {"role": "user", "content": idea.strip()}]
    text = ""
    for temperature in (0.0, 0.7):  # greedy first, then one sampled retry
        text = text_generator.chat(messages, max_new_tokens=200, temperature=temperature, seed=seed, json_schema=PLAN_SCHEMA)
        try:
            return text, Layout.parse(text)
        except GenlabError:  # valid JSON by construction, but a box may be too small or inside out
            continue
    raise GenlabError(f"the language model planned {idea!r} as {text!r}, which is not a layout the shapes model can draw; "
                      "try rephrasing the prompt")


def write_prompt(idea: str, text_generator, seed: int = 0) -> tuple[str, Spec]:
    """Ask the LLM for a description of `idea`; returns its text and the parsed spec."""
    if not idea or not idea.strip():
        raise GenlabError("the idea is empty; describe what to draw, e.g. 'something that looks like a traffic light'")
    messages = [{"role": "system", "content": INSTRUCTIONS}]
    for example, answer in IDEAS:
        messages += [{"role": "user", "content": example}, {"role": "assistant", "content": answer}]
    messages.append({"role": "user", "content": idea.strip()})
    text = ""
    for temperature in (0.0, 0.7):  # greedy first, then one sampled retry
        text = text_generator.chat(messages, max_new_tokens=32, temperature=temperature, seed=seed, stop=["\n"]).strip()
        try:
            return text, parse(text, first_two=True)
        except GenlabError:
            continue
    raise GenlabError(f"the language model described {idea!r} as {text!r}, which names nothing the shapes model can draw "
                      f"(it knows {', '.join(SHAPES)} in {', '.join(COLORS)}); try rephrasing the idea")


def imagine(idea: str, seed: int = 0, steps: int | None = None, guidance: float | None = None, text_generator=None,
            image_generator=None, plan: bool = False) -> Imagined:
    """Idea -> the LLM's prompt (or, with `plan`, its layout) -> a picture. Generators may be passed in to
    reuse loaded models. `steps` and `guidance` default to the image model's own."""
    from .image.generator import ImageGenerator
    from .text.generator import TextGenerator

    start = time.perf_counter()
    if plan:
        llm_text, layout = write_plan(idea, text_generator or planner(), seed)
        llm_seconds, start = time.perf_counter() - start, time.perf_counter()
        [image] = (image_generator or ImageGenerator("shapes")).generate("", layout=layout, steps=steps, seed=seed,
                                                                         guidance=guidance)
        return Imagined(idea, llm_text, layout.prompt(), None, image, llm_seconds, time.perf_counter() - start, layout)
    llm_text, spec = write_prompt(idea, text_generator or TextGenerator(), seed)
    llm_seconds = time.perf_counter() - start
    prompt = describe(spec)
    start = time.perf_counter()
    [image] = (image_generator or ImageGenerator("shapes")).generate(prompt, steps=steps, seed=seed, guidance=guidance)
    return Imagined(idea, llm_text, prompt, spec, image, llm_seconds, time.perf_counter() - start)
