"""Distillation (diffusion/distill.py): the teacher's pairs, the reflow sampler, resume, the bundled student and bad input."""

import pytest
import torch

from genlab.diffusion.distill import Conditions, DistillRun, draw_pairs, load_teacher, reflow_loss
from genlab.diffusion.samplers import SAMPLERS, make_plan
from genlab.diffusion.schedules import FlowSchedule, NoiseSchedule
from genlab.errors import GenlabError
from genlab.registry import locate
from genlab.training.options import DistillOptions
from test_cli import assert_one_line_error, run

TINY = dict(pairs=24, teacher_steps=3, batch_size=8, warmup=2, sample_every=0)


def test_reflow_plan_is_the_uniform_grid_and_needs_a_flow_model():
    plan = make_plan("reflow", FlowSchedule(), 4)
    assert plan.timesteps.tolist() == [1000, 750, 500, 250] and plan.sigmas.tolist() == [1, 0.75, 0.5, 0.25, 0]
    with pytest.raises(GenlabError, match="the reflow sampler is for a distilled rectified-flow student"):
        make_plan("reflow", NoiseSchedule.cosine(), 4)


@pytest.mark.parametrize("steps", [1, 2, 4, 7])
def test_a_perfect_student_lands_on_its_pairs_image_in_any_number_of_steps(steps):
    """On a straight line from x0 (t = 0) to z (t = 1) the velocity is z - x0 everywhere, so
    Euler from z reaches x0 exactly: what reflow trains the student towards."""
    g = torch.Generator().manual_seed(0)
    z, x0 = torch.randn(3, 1, 4, 4, generator=g), torch.randn(3, 1, 4, 4, generator=g)
    perfect = lambda xt, t: z - x0  # noqa: E731
    *_, last = SAMPLERS["reflow"](perfect, z, make_plan("reflow", FlowSchedule(), steps))
    assert torch.allclose(last.xt, x0, atol=1e-5) and last.index == steps


def test_pairs_are_the_teachers_own_samples():
    """Each pair's image is exactly what the teacher draws from that noise (ImageGenerator.class_samples)."""
    teacher = load_teacher("digits")
    pairs = draw_pairs(teacher, Conditions.for_teacher(teacher.model), 20, 5, "dpmpp", 1.25, seed=3)
    assert pairs["keys"].tolist() == [i % 10 for i in range(20)]
    images, _ = teacher.class_samples(pairs["keys"], 5, "dpmpp", 1.25, seed=3)
    assert torch.allclose(teacher.model.decode(pairs["x0"]), images, atol=1e-5)


def test_the_loss_is_zero_exactly_for_the_straight_velocity():
    """reflow_loss regresses onto z - x0 at x_t = (1 - t) x0 + t z: a student that reads x0 and z off
    a lookup answers z - x0 and scores 0; one that answers x0 - z (the sign flipped) does not."""
    g = torch.Generator().manual_seed(0)
    pairs = {"z": torch.randn(6, 1, 4, 4, generator=g), "x0": torch.randn(6, 1, 4, 4, generator=g), "keys": torch.arange(6)}

    def student(sign):
        def velocity(xt, t, labels):  # t = 1000 t': recover x0 from x_t and t, then the direction
            tt = (t / 1000).view(-1, 1, 1, 1)
            z = pairs["z"][labels]
            x0 = torch.where(tt < 1, (xt - tt * z) / (1 - tt).clamp_min(1e-6), pairs["x0"][labels])
            return sign * (z - x0)
        velocity.config = type("C", (), {"num_classes": 6})()
        return velocity

    conditions = Conditions(student(1), None)
    assert reflow_loss(student(1), pairs, conditions, 64, torch.Generator().manual_seed(1)) < 1e-8
    assert reflow_loss(student(-1), pairs, conditions, 64, torch.Generator().manual_seed(1)) > 1


def test_a_new_run_with_other_settings_redraws_the_pairs(tmp_path):
    first = DistillRun.create(tmp_path / "r", DistillOptions(steps=2, **TINY))
    again = DistillRun.create(tmp_path / "r", DistillOptions(steps=2, **TINY))  # same settings: the same file
    assert again.pairs_seconds == first.pairs_seconds and torch.equal(again.pairs["x0"], first.pairs["x0"])
    other = DistillRun.create(tmp_path / "r", DistillOptions(steps=2, **{**TINY, "teacher_steps": 2}))
    assert not torch.allclose(other.pairs["x0"], first.pairs["x0"])  # drawn again, by 2 teacher steps


def test_resume_is_bit_for_bit_and_reuses_the_pairs(tmp_path):
    options = DistillOptions(steps=6, **TINY)
    straight = DistillRun.create(tmp_path / "a", options)
    for _ in straight.steps():
        pass
    killed = DistillRun.create(tmp_path / "b", options)
    assert torch.equal(killed.pairs["x0"], straight.pairs["x0"])  # the same seed draws the same pairs
    for s in killed.steps():
        if s.step == 3:
            killed.save()
            break
    pairs = (tmp_path / "b" / "pairs.safetensors").read_bytes()
    resumed = DistillRun.resume(tmp_path / "b")
    assert resumed.trainer.step == 3 and (tmp_path / "b" / "pairs.safetensors").read_bytes() == pairs
    for _ in resumed.steps():
        pass
    for name, a in straight.trainer.model.state_dict().items():
        assert torch.equal(a, resumed.trainer.model.state_dict()[name]), name


def test_cli_distills_then_samples_in_one_step(tmp_path, capsys):
    out = tmp_path / "student"
    code, _, err = run(["distill", "--teacher", "digits", "--steps", "4", "--checkpoint-every", "4", "--sample-every", "4",
                        "--out", str(out)] + [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items() if k != "sample_every"],
                       capsys)
    assert code == 0, err
    assert (out / "samples" / "step-0000004.png").is_file() and (out / "pairs.safetensors").is_file()
    code, _, err = run(["image", "7", "--model", str(out), "--steps", "1", "--out", str(tmp_path / "x.png")], capsys)
    assert code == 0 and "1 model calls" in err, err  # guidance is distilled in: one evaluation, not a double batch


def test_the_bundled_student_draws_the_asked_digit_in_one_step():
    from genlab.eval.digits import DigitClassifier, accuracy
    from genlab.image.generator import ImageGenerator

    gen = ImageGenerator("digits-distilled")
    assert gen.default_sampler == "reflow" and gen.config.distilled["teacher"] == "digits"
    labels = torch.arange(10).repeat_interleave(20)
    x, calls = gen.class_samples(labels, 1, seed=1)
    assert calls == 1 and accuracy(DigitClassifier.bundled(), x, labels) >= 0.98


@pytest.mark.parametrize("args,fragment", [
    (["--teacher", "digits-gan"], "--teacher must be one of genlab's diffusion models"),
    (["--teacher", "pydoc-gpt"], "it makes text, not images"),
    (["--teacher", "digits-distilled"], "is already a distilled student; set --teacher to 'digits', the model it was distilled from"),
    (["--teacher", "/nonexistent"], "unknown model '/nonexistent'"),
    (["--teacher-sampler", "ddpm"], "--teacher-sampler must be dpmpp, ddim, euler or heun, got 'ddpm'"),
    (["--pairs", "3"], "--pairs must be at least 16, got 3"),
    (["--guidance", "-1"], "--guidance must be"),
])
def test_bad_distill_input_is_one_line(tmp_path, args, fragment, capsys):
    code, _, err = run(["distill", "--out", str(tmp_path / "r")] + args, capsys)
    assert_one_line_error(code, err, fragment)


@pytest.mark.parametrize("args,fragment", [
    (["--guidance", "3"], "--guidance must be 1 or left out for this model, which has its teacher's scale 1.25 distilled in; got 3.0"),
    (["--negative-prompt", "8"], "--negative-prompt is not taken by this model, which has its teacher's guidance 1.25 distilled in"),
])
def test_a_student_refuses_a_second_guidance(args, fragment, capsys):
    code, _, err = run(["image", "7", "--model", "digits-distilled"] + args, capsys)
    assert_one_line_error(code, err, fragment)


def test_a_folder_teacher_is_kept_as_an_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t").symlink_to(locate("digits").path)  # a teacher folder, named relative to the working directory
    assert DistillOptions(teacher="t").teacher == str((tmp_path / "t").resolve())
    assert DistillOptions(teacher="digits").teacher == "digits"


def test_a_student_refuses_the_teachers_samplers(capsys):
    code, _, err = run(["image", "7", "--model", "digits-distilled", "--sampler", "dpmpp"], capsys)
    assert_one_line_error(code, err, "a rectified-flow model samples with euler, heun or reflow, not 'dpmpp'")


def test_a_text_to_image_teacher_distills_into_a_prompted_student(tmp_path, capsys):
    """The shapes model distills the same way: pairs drawn for training captions, the student keeps
    the teacher's VAE and text encoder and draws a prompt in one evaluation."""
    out = tmp_path / "shapes-student"
    code, _, err = run(["distill", "--teacher", "shapes", "--steps", "2", "--checkpoint-every", "2", "--out", str(out)]
                       + [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()], capsys)
    assert code == 0, err
    code, _, err = run(["image", "a red circle", "--model", str(out), "--steps", "1", "--seed", "3",
                        "--out", str(tmp_path / "x.png")], capsys)
    assert code == 0 and "1 model calls" in err, err
    from PIL import Image

    assert Image.open(tmp_path / "x.png").size == (32, 32)
