"""genlab's samplers against diffusers' schedulers: same model, same noise, same generator."""

import pytest
import torch

from genlab.errors import GenlabError
from genlab.diffusion.samplers import SAMPLERS, make_plan, model_calls
from genlab.diffusion.schedules import FlowSchedule, NoiseSchedule

diffusers = pytest.importorskip("diffusers")


class ToyDenoiser(torch.nn.Module):
    """A small nonlinear function of (x_t, t), so that every sampler's arithmetic matters."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv1 = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 1, 3, padding=1)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.3
        self.calls = 0

    def forward(self, xt, t):
        self.calls += 1
        tt = (t.float() / 1000).view(-1, 1, 1, 1)
        return self.conv2(torch.tanh(self.conv1(xt) * (1 + tt))) + 0.5 * xt * tt


def reference(name, schedule_name, steps, prediction, noise, seed, eta):
    """Sample with diffusers' scheduler, the loop every diffusers pipeline runs."""
    cls = {
        "ddpm": diffusers.DDPMScheduler,
        "ddim": diffusers.DDIMScheduler,
        "dpmpp": diffusers.DPMSolverMultistepScheduler,
        "dpmpp-sde": diffusers.DPMSolverMultistepScheduler,
        "euler": diffusers.EulerDiscreteScheduler,
        "heun": diffusers.HeunDiscreteScheduler,
    }[name]
    kwargs = {"beta_schedule": schedule_name, "beta_start": 1e-4, "beta_end": 0.02, "prediction_type": "epsilon" if prediction == "eps" else "v_prediction"}
    if name in ("ddpm", "ddim"):
        kwargs["clip_sample"] = False
    if not name.startswith("dpmpp"):
        kwargs["timestep_spacing"] = "trailing"
    if name == "dpmpp-sde":
        kwargs["algorithm_type"] = "sde-dpmsolver++"
    sched = cls(num_train_timesteps=1000, **kwargs)
    sched.set_timesteps(steps)
    model = ToyDenoiser()
    g = torch.Generator().manual_seed(seed)
    x = noise * sched.init_noise_sigma
    for t in sched.timesteps:
        out = model(sched.scale_model_input(x, t), t.expand(x.shape[0]))
        extra = {"eta": eta, "generator": g} if name == "ddim" else {} if name == "heun" else {"generator": g}
        x = sched.step(out, t, x, **extra).prev_sample
    return x, model.calls


CASES = [
    ("ddpm", "linear", 10, "eps", 0.0),
    ("ddpm", "squaredcos_cap_v2", 25, "v", 0.0),
    ("ddim", "linear", 10, "eps", 0.0),
    ("ddim", "squaredcos_cap_v2", 20, "v", 0.5),
    ("dpmpp", "linear", 10, "eps", 0.0),
    ("dpmpp", "squaredcos_cap_v2", 20, "v", 0.0),
    ("dpmpp-sde", "linear", 10, "eps", 0.0),
    ("dpmpp-sde", "squaredcos_cap_v2", 20, "v", 0.0),
    ("euler", "linear", 10, "eps", 0.0),
    ("euler", "linear", 20, "v", 0.0),
    ("heun", "linear", 10, "eps", 0.0),
    ("heun", "linear", 20, "v", 0.0),
    ("ddim", "linear", 1, "eps", 0.0),
]


@pytest.mark.parametrize("name,schedule_name,steps,prediction,eta", CASES)
def test_sampler_matches_diffusers(name, schedule_name, steps, prediction, eta):
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    expected, expected_calls = reference(name, schedule_name, steps, prediction, noise, seed=7, eta=eta)
    schedule = NoiseSchedule.linear() if schedule_name == "linear" else NoiseSchedule.cosine()
    model = ToyDenoiser()
    plan = make_plan(name, schedule, steps, prediction)
    start = noise
    if name in ("euler", "heun"):  # diffusers starts these at sigma_max * noise; genlab at sqrt(1 + sigma_max^2) * noise
        s = float(plan.sigmas[0])
        start = noise * s / (1 + s * s) ** 0.5
    trajectory = list(SAMPLERS[name](model, start, plan, generator=torch.Generator().manual_seed(7), eta=eta))
    assert len(trajectory) == steps and trajectory[-1].sigma == 0
    assert model.calls == expected_calls == model_calls(name, steps)
    torch.testing.assert_close(trajectory[-1].xt, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name,steps", [("euler", 10), ("heun", 8)])
def test_rectified_flow_matches_diffusers_flow_match_schedulers(name, steps):
    from genlab.diffusion.schedules import FlowSchedule

    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    cls = diffusers.FlowMatchEulerDiscreteScheduler if name == "euler" else diffusers.FlowMatchHeunDiscreteScheduler
    sched = cls(num_train_timesteps=1000)
    sched.set_timesteps(steps)
    ref_model, x = ToyDenoiser(), noise.clone()
    for t in sched.timesteps:
        x = sched.step(ref_model(x, t.expand(2)), t, x).prev_sample
    model = ToyDenoiser()
    plan = make_plan(name, FlowSchedule(), steps)
    trajectory = list(SAMPLERS[name](model, noise, plan))
    assert model.calls == ref_model.calls == model_calls(name, steps)
    torch.testing.assert_close(trajectory[-1].xt, x, atol=1e-4, rtol=1e-4)


def test_rectified_flow_only_with_ode_samplers():
    from genlab.diffusion.schedules import FlowSchedule

    with pytest.raises(GenlabError, match="a rectified-flow model samples with euler, heun or reflow, not 'ddim'"):
        make_plan("ddim", FlowSchedule(), 10)


def test_ddpm_noise_comes_from_the_generator():
    noise = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    plan = make_plan("ddpm", NoiseSchedule.linear(), 10)
    run = lambda seed: list(SAMPLERS["ddpm"](ToyDenoiser(), noise, plan, generator=torch.Generator().manual_seed(seed)))[-1].xt  # noqa: E731
    assert torch.equal(run(3), run(3))
    assert not torch.allclose(run(3), run(4))


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_one_step_starts_from_pure_noise(sampler):
    flow = sampler == "reflow"  # a distilled student's: t = 1 is pure noise on the straight path
    plan = make_plan(sampler, FlowSchedule() if flow else NoiseSchedule.linear(), 1)
    assert plan.timesteps.tolist() == [1000.0 if flow else 999.0] and plan.sigmas[-1] == 0


def test_img2img_plan_keeps_the_last_steps():
    plan = make_plan("ddim", NoiseSchedule.linear(), 20)
    half = plan.skip(0.5)
    assert len(half.timesteps) == 10 and torch.equal(half.timesteps, plan.timesteps[10:])
    assert len(plan.skip(1.0).timesteps) == 20 and len(plan.skip(0.0).timesteps) == 0


@pytest.mark.parametrize("sampler,steps,message", [
    ("plms", 10, "unknown sampler 'plms'; choose one of: ddpm, ddim, dpmpp, dpmpp-sde, euler, heun"),
    ("ddim", 0, "steps must be at least 1, got 0"),
    ("ddim", 1001, "steps must be at most the 1000 steps the model was trained with, got 1001"),
])
def test_bad_plans(sampler, steps, message):
    with pytest.raises(GenlabError, match=message.replace("(", r"\(")):
        make_plan(sampler, NoiseSchedule.linear(), steps)


@pytest.mark.parametrize("schedule_name,schedule", [("linear", NoiseSchedule.linear()), ("squaredcos_cap_v2", NoiseSchedule.cosine())])
def test_dpmpp_with_as_many_steps_as_the_model_has(schedule_name, schedule):
    """steps = T: spacing T points over T - 1 repeats one timestep. That step is empty (h = 0), so the
    ODE sampler ends where T - 1 steps end; diffusers' DPMSolverMultistepScheduler returns NaN here."""
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    full, one_less = make_plan("dpmpp", schedule, 1000, "v"), make_plan("dpmpp", schedule, 999, "v")
    assert len(full.timesteps) == 1000 and set(full.timesteps.tolist()) == set(one_less.timesteps.tolist())
    ends = [list(SAMPLERS["dpmpp"](ToyDenoiser(), noise, plan))[-1].xt for plan in (full, one_less)]
    torch.testing.assert_close(ends[0], ends[1], atol=1e-4, rtol=1e-4)
    sde = list(SAMPLERS["dpmpp-sde"](ToyDenoiser(), noise, full, generator=torch.Generator().manual_seed(0)))[-1].xt
    assert torch.isfinite(sde).all()
    expected, _ = reference("dpmpp", schedule_name, 1000, "v", noise, 0, 0.0)
    assert not torch.isfinite(expected).all()  # if diffusers mends this, compare with it instead
