"""The shapes world (data/shapes.py) and its pixel checker (eval/shapes.py)."""

import dataclasses

import numpy as np
import pytest

from genlab.errors import GenlabError
from genlab.eval.shapes import detect, satisfies
from genlab.data.shapes import COLORS, HELDOUT_COMBOS, RELATIONS, SIDES, ShapesWorld, Spec, Want, coverage, parse, render

SPLITS = ["train", "heldout-phrasing", "heldout-combo"]


def examples(split, n=400, seed=0):
    world = ShapesWorld(split, seed)
    return [world.example(i) for i in range(n)]


@pytest.mark.parametrize("split", SPLITS)
def test_every_caption_parses_back_to_its_spec(split):
    for scene, caption in examples(split):
        assert parse(caption) == scene.spec, caption


@pytest.mark.parametrize("split", SPLITS)
def test_checker_reads_the_ground_truth_of_rendered_scenes(split):
    for scene, caption in examples(split):
        ok, why = satisfies(detect(render(scene)), scene.spec)
        assert ok, f"{caption}: {why}"


def test_coverage_is_what_render_draws():
    """Per pixel, the objects' shares times their colours give back the rendered picture; on a
    coarser grid each cell's share is the mean of the pixels it holds."""
    for scene, caption in examples("train", 200):
        masks = coverage(scene, 32)
        drawn = sum(m[..., None] * np.array(COLORS[o.color], np.float32) for m, o in zip(masks, scene.objects))
        assert np.abs(drawn - np.asarray(render(scene), np.float32)).max() <= 2.0, caption
        for fine, coarse in zip(masks, coverage(scene, 8)):
            np.testing.assert_allclose(fine.reshape(8, 4, 8, 4).mean((1, 3)), coarse, atol=2 / 255)


def test_checker_finds_the_drawn_attributes():
    for scene, caption in examples("train", 200):
        found = detect(render(scene))
        assert sorted((f.color, f.shape, f.size) for f in found) == sorted((o.color, o.shape, o.size) for o in scene.objects), caption
        for o in scene.objects:  # within a pixel of the drawn centre
            assert min(abs(f.x - o.x) + abs(f.y - o.y) for f in found) <= 1.0, caption


def _wrong(spec: Spec) -> list[Spec]:
    """Specs the same picture must fail: another colour, another shape, the other side or relation."""
    first = spec.objects[0]
    out = [dataclasses.replace(spec, objects=(dataclasses.replace(first, shape=s),) + spec.objects[1:])
           for s in ("circle", "square", "triangle") if s != first.shape]
    if first.color:
        other = next(c for c in COLORS if c != first.color)
        out.append(dataclasses.replace(spec, objects=(dataclasses.replace(first, color=other),) + spec.objects[1:]))
    flip = {"left": "right", "right": "left", "top": "bottom", "bottom": "top",
            "left of": "right of", "right of": "left of", "above": "below", "below": "above"}
    if spec.where:
        out.append(dataclasses.replace(spec, where=flip[spec.where]))
    if len(spec.objects) == 1:
        out.append(Spec("count", (first, first)))
    return out


def test_checker_rejects_what_the_picture_does_not_show():
    for scene, caption in examples("train", 200):
        found = detect(render(scene))
        for wrong in _wrong(scene.spec):
            if wrong.kind == "count" and scene.spec.kind == "count":
                continue
            assert not satisfies(found, wrong)[0], f"{caption} passed as {wrong}"


def test_checker_sees_nothing_in_a_black_or_noisy_picture():
    rng = np.random.default_rng(0)
    assert detect(np.zeros((32, 32, 3), np.uint8)) == []
    noise = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)  # specks: no region reaches min_area of one colour
    assert not satisfies(detect(noise), Spec("color", (Want("circle", "red"),)))[0]


def test_heldout_combinations_never_appear_in_training_pictures():
    for scene, _ in examples("train", 1000):
        assert not {(o.color, o.shape) for o in scene.objects} & HELDOUT_COMBOS
    for scene, _ in examples("heldout-combo", 300):
        assert {(w.color, w.shape) for w in scene.spec.objects} & HELDOUT_COMBOS


def test_heldout_phrasings_differ_from_training_phrasings():
    train = {caption for _, caption in examples("train", 2000)}
    held = [caption for _, caption in examples("heldout-phrasing", 300)]
    assert not train & set(held)
    kinds = {scene.spec.kind for scene, _ in examples("heldout-phrasing", 300)}
    assert kinds == {"single", "color", "count", "position", "relation", "two"}
    assert {scene.spec.where for scene, _ in examples("train", 500) if scene.spec.where} == set(SIDES) | set(RELATIONS)


def test_examples_are_a_pure_function_of_seed_and_index():
    a, b = ShapesWorld("train", seed=3), ShapesWorld("train", seed=3)
    assert render(a.example(7)[0]).tobytes() == render(b.example(7)[0]).tobytes()
    assert a.example(7) == b.example(7)
    assert ShapesWorld("train", seed=4).example(7) != a.example(7)


@pytest.mark.parametrize("text", ["a cat", "", "a red circle, a blue square and a green triangle"])
def test_parse_names_the_vocabulary_when_it_cannot_read_a_prompt(text):
    with pytest.raises(GenlabError, match="circle, square, triangle"):
        parse(text)


def test_parse_reads_free_phrasings():
    assert parse("Two RED circles!") == Spec("count", (Want("circle", "red"),) * 2)
    assert parse("a big blue square to the right of a small yellow triangle") == \
        Spec("relation", (Want("square", "blue", "big"), Want("triangle", "yellow", "small")), "right of")
    assert parse("an orange triangle at the bottom") == Spec("position", (Want("triangle", "orange"),), "bottom")
