"""The LLM plans the picture (llm_to_image.py, plan=True): the layouts it means, the bundled planner, the commands."""

import json

import pytest

from genlab.data.shapes import ShapesWorld, render
from genlab.eval.shapes import detect, satisfies
from genlab.llm_to_image import PLAN_SCHEMA, plan_data, plan_of


def test_the_planned_layout_of_every_kind_of_caption_satisfies_it():
    """plan_of, the planner's training answers: drawn as the shapes world draws, each satisfies its caption's spec."""
    world = ShapesWorld("train", seed=7)
    for i in range(200):
        scene, caption = world.example(i)
        ok, why = satisfies(detect(render(plan_of(scene.spec).scene())), scene.spec)
        assert ok, (caption, why)


def test_plan_data_is_chat_jsonl_of_valid_layouts(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    plan_data(str(tmp_path / "plans.jsonl"), count=50)
    rows = [json.loads(line) for line in (tmp_path / "plans.jsonl").read_text().splitlines()]
    assert len(rows) == 50 and all([m["role"] for m in r["messages"]] == ["system", "user", "assistant"] for r in rows)
    for r in rows:
        jsonschema.validate(json.loads(r["messages"][2]["content"]), PLAN_SCHEMA)


@pytest.fixture(scope="module")
def writer():
    from genlab.llm_to_image import planner

    return planner()


def test_the_bundled_planner_plans_held_out_phrasings(writer):
    """Sentence frames the planner never saw ("there is a ... below a ...", "a pair of ..."): greedy plans that
    satisfy the caption."""
    from genlab.llm_to_image import write_plan

    world = ShapesWorld("heldout-phrasing", seed=5)
    examples = [world.example(i) for i in range(16)]
    good = 0
    for i, (scene, caption) in enumerate(examples):
        _, layout = write_plan(caption, writer, seed=i)
        good += satisfies(detect(render(layout.scene())), scene.spec)[0]
    assert good >= 15, f"{good} of {len(examples)} plans right"


@pytest.mark.xfail(strict=True, reason="known defect (issue 27): the planner, trained on captions that name the placed "
                                       "object first, misplans a sentence that starts with the reference object "
                                       "(docs/control.md)")
def test_the_planner_reads_a_sentence_that_starts_with_the_reference_object(writer):
    from genlab.llm_to_image import write_plan

    _, layout = write_plan("below a red triangle there is a blue circle", writer)
    circle, triangle = ({o.shape: o for o in layout.objects}[s] for s in ("circle", "triangle"))
    assert circle.color == "blue" and triangle.color == "red" and circle.centre[1] > triangle.centre[1] + 4


def test_imagine_and_image_plan_print_and_save_the_plan(tmp_path, capsys):
    from genlab.cli import main
    from genlab.data.layouts import Layout

    for command in (["imagine", "a green square to the left of a yellow circle", "--plan"],
                    ["image", "a green square to the left of a yellow circle", "--plan", "--seed", "0"]):
        out = tmp_path / f"{command[0]}.png"
        with pytest.raises(SystemExit) as e:
            main([*command, "--out", str(out), "--steps", "10"])
        assert e.value.code == 0
        printed = "".join(capsys.readouterr())  # the plan is printed with the status lines, on stderr
        plan = Layout.parse((tmp_path / f"{command[0]}.plan.json").read_text())
        assert out.is_file() and {(o.color, o.shape) for o in plan.objects} == {("green", "square"), ("yellow", "circle")}
        assert '"objects"' in printed
    for args, message in [(["image", "x", "--plan", "--layout", "{}"], "give --plan or --layout, not both"),
                          (["image", "--plan"], "--plan needs a prompt to plan")]:
        with pytest.raises(SystemExit) as e:
            main(args)
        err = capsys.readouterr().err
        assert e.value.code == 2 and message in err, err


def test_the_server_plans_and_answers_with_the_plan():
    import base64
    import io

    import httpx
    from conftest import start_server

    from genlab.image.generator import ImageGenerator
    from genlab.server.app import ServerConfig, create_app

    server = start_server(create_app(ServerConfig(text_models=[], image_models=["shapes"])))
    try:
        ask = {"prompt": "a green square to the left of a yellow circle", "plan": True, "steps": 10, "seed": 0}
        r = httpx.post(server.url + "/v1/images/generations", json=ask, timeout=300)
        assert r.status_code == 200, r.text
        plan = r.json()["plan"]
        assert {(o["color"], o["shape"]) for o in plan["objects"]} == {("green", "square"), ("yellow", "circle")}
        [same] = ImageGenerator("shapes").generate("", layout=plan, steps=10, seed=0)
        buffer = io.BytesIO()
        same.save(buffer, format="PNG")
        assert base64.b64decode(r.json()["data"][0]["b64_json"]) == buffer.getvalue()
        r = httpx.post(server.url + "/v1/images/generations", json=dict(ask, layout=plan), timeout=60)
        assert r.status_code == 400 and "give plan or layout, not both" in r.json()["error"]["message"]
    finally:
        server.stop()
