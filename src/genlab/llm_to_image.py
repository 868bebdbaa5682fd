"""The LLM writes, diffusion draws: the two families of genlab joined in one call.

    from genlab import imagine
    result = imagine("something that looks like a traffic light", seed=0)
    result.prompt, result.image          # "a red circle above a green circle", a PIL image

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
from .data.shapes import COLORS, SHAPES, Spec, describe, parse

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
    spec: Spec
    image: object  # PIL image
    llm_seconds: float
    image_seconds: float


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
            image_generator=None) -> Imagined:
    """Idea -> the LLM's prompt -> a picture. Generators may be passed in to reuse loaded models.
    `steps` and `guidance` default to the image model's own."""
    from .image.generator import ImageGenerator
    from .text.generator import TextGenerator

    start = time.perf_counter()
    llm_text, spec = write_prompt(idea, text_generator or TextGenerator(), seed)
    llm_seconds = time.perf_counter() - start
    prompt = describe(spec)
    start = time.perf_counter()
    [image] = (image_generator or ImageGenerator("shapes")).generate(prompt, steps=steps, seed=seed, guidance=guidance)
    return Imagined(idea, llm_text, prompt, spec, image, llm_seconds, time.perf_counter() - start)
