"""Samplers: run the diffusion process backwards, from noise to an image.

Every sampler here is a generator that yields a `SampleStep` after each step, so the
progress bar, the saved trajectory and live previews all watch the same loop:

    plan = make_plan("dpmpp", schedule, steps=20)
    for step in SAMPLERS["dpmpp"](model, torch.randn(1, 1, 16, 16), plan, generator=g):
        ...                                      # step.xt: (B, C, H, W) at noise level step.sigma
    image = step.xt

`model(xt, t)` is the trained denoiser: it sees x_t in the variance-preserving scale
(DDPM eq. 4) and a (B,) float timestep, and returns eps or v. Noise levels are written
as sigma = sqrt((1 - alpha_bar) / alpha_bar), so that x_t / sqrt(alpha_bar) = x0 + sigma * eps
(Karras et al. 2022, "EDM"); sigma = 0 is a clean image.

The samplers reproduce diffusers' DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler
(ODE and SDE), EulerDiscreteScheduler and HeunDiscreteScheduler on the same
model and noise to 1e-4 (with timestep_spacing="trailing" and no sample clipping; diffusers
starts Euler and Heun from sigma_max * noise where genlab uses sqrt(1 + sigma_max^2) * noise,
so the test scales the start to match); tests/test_samplers.py checks it. genlab writes them out because each one is a dozen lines of the paper's maths,
which is easier to learn from than a scheduler's set_timesteps/step state machine.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from ..errors import check
from .schedules import FlowSchedule, NoiseSchedule, noised

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (xt (B,C,H,W), t (B,)) -> eps or v
Keep = Callable[[torch.Tensor, float], torch.Tensor]  # (xt, sigma) -> xt with known pixels put back


@dataclass
class SampleStep:
    index: int  # 1-based: this is step `index` of `total`
    total: int
    t: float  # the timestep the model saw
    sigma: float  # noise level of xt after this step (0 on the last one)
    xt: torch.Tensor  # (B, C, H, W) current sample, variance-preserving scale
    x0: torch.Tensor  # (B, C, H, W) the model's current guess of the clean image
    calls: int = 0  # model calls so far (filled in by callers that count them)


@dataclass
class Plan:
    """The noise levels a sampler visits: step i evaluates the model at timesteps[i] and
    moves x from sigmas[i] to sigmas[i + 1]. sigmas[-1] is 0."""

    timesteps: torch.Tensor  # (n,) float
    sigmas: torch.Tensor  # (n + 1,) float64; for rectified flow, the flow time t in [0, 1]
    prediction: str  # "eps", "v" or "flow": what the model returns

    def alpha_bar(self, i: int) -> float:
        return 1.0 / (1.0 + float(self.sigmas[i]) ** 2)

    def noised(self, x0: torch.Tensor, eps: torch.Tensor, level: float) -> torch.Tensor:
        """x0 taken to noise level `level` (a sigma, or a flow time): for img2img and inpainting."""
        if self.prediction == "flow":
            return noised(x0, eps, 1 - level, level)
        a = 1.0 / (1.0 + level * level)
        return noised(x0, eps, math.sqrt(a), math.sqrt(1 - a))

    def skip(self, strength: float) -> "Plan":
        """Keep the last int(n * strength) steps: img2img starts part-way down (SDEdit), as diffusers does."""
        n = len(self.timesteps)
        start = n - min(int(n * strength), n)
        return Plan(self.timesteps[start:], self.sigmas[start:], self.prediction)


def make_plan(sampler: str, schedule: NoiseSchedule | FlowSchedule, steps: int, prediction: str = "eps") -> Plan:
    """Pick `steps` timesteps from the schedule's T, spaced as diffusers spaces them for that sampler."""
    check(sampler in SAMPLERS, f"unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}")
    check(steps >= 1, f"steps must be at least 1, got {steps}")
    T = schedule.num_steps
    check(steps <= T, f"steps must be at most the {T} steps the model was trained with, got {steps}")
    if sampler == "reflow":  # a distilled student's grid: t = 1, 1 - 1/n, ..., 1/n, then 0
        check(isinstance(schedule, FlowSchedule), "the reflow sampler is for a distilled rectified-flow student (genlab distill)")
        t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
        return Plan((t[:-1] * T).float(), t, "flow")
    if isinstance(schedule, FlowSchedule):  # t from 1 down to 1/T evenly, then 0 (diffusers' FlowMatch schedulers)
        names = samplers_for(schedule)  # reflow has its own grid, above
        check(sampler in names, f"a rectified-flow model samples with {', '.join(names[:-1])} or {names[-1]}, not {sampler!r}")
        t = torch.linspace(1.0, 1.0 / T, steps, dtype=torch.float64)
        return Plan((t * T).float(), torch.cat([t, t.new_zeros(1)]), "flow")
    all_sigmas = ((1 - schedule.alpha_bar.double()) / schedule.alpha_bar.double()).sqrt()  # (T,)
    if sampler.startswith("dpmpp"):  # n + 1 integer points from T-1 to 0, dropping the 0
        t = torch.linspace(0, T - 1, steps + 1, dtype=torch.float64).round().flip(0)[:-1]
    else:  # "trailing": T-1, T-1-T/n, ... so that even one step starts from pure noise (Lin et al. 2024, sec. 3.3)
        t = torch.arange(T, 0, -T / steps, dtype=torch.float64).round() - 1
    sigmas = _interp(t, all_sigmas)
    return Plan(t.float(), torch.cat([sigmas, sigmas.new_zeros(1)]), prediction)


def _interp(t: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """values at fractional indices t, linearly interpolated (numpy.interp on 0..T-1)."""
    lo = t.floor().long().clamp(max=len(values) - 1)
    hi = (lo + 1).clamp(max=len(values) - 1)
    w = t - lo.double()
    return values[lo] * (1 - w) + values[hi] * w


def x0_and_eps(out: torch.Tensor, xt: torch.Tensor, alpha_bar: float, prediction: str):
    """Turn the model's output into (x0, eps), using x_t = sqrt(a) x0 + sqrt(1 - a) eps (DDPM eq. 4)."""
    a, b = math.sqrt(alpha_bar), math.sqrt(1 - alpha_bar)
    if prediction == "eps":
        return (xt - b * out) / a, out
    # v = a eps - b x0 (Salimans & Ho 2022, section 4), so x0 = a xt - b v and eps = a v + b xt
    return a * xt - b * out, a * out + b * xt


def _call(model: Denoiser, xt: torch.Tensor, t: float) -> torch.Tensor:
    return model(xt, torch.full((xt.shape[0],), t, dtype=torch.float32, device=xt.device))


def _noise(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    # drawn on the CPU, then moved: one CPU generator serves every device
    return torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)


def ddpm(model: Denoiser, x: torch.Tensor, plan: Plan, generator=None, keep: Keep | None = None, **_) -> Iterator[SampleStep]:
    """Ancestral sampling (Ho et al. 2020): draw x_{t-1} from the posterior q(x_{t-1} | x_t, x0)."""
    n = len(plan.timesteps)
    for i in range(n):
        t, a_t, a_prev = float(plan.timesteps[i]), plan.alpha_bar(i), plan.alpha_bar(i + 1)
        # 1. predict x0 from the model's output
        x0, _ = x0_and_eps(_call(model, x, t), x, a_t, plan.prediction)
        # 2. the posterior mean, DDPM eq. 7: a mix of x0 and x_t
        beta = 1 - a_t / a_prev
        mean = (math.sqrt(a_prev) * beta / (1 - a_t)) * x0 + (math.sqrt(1 - beta) * (1 - a_prev) / (1 - a_t)) * x
        # 3. add noise with the posterior variance beta_tilde, DDPM eq. 7 (none on the last step)
        x = mean
        if plan.sigmas[i + 1] > 0:
            x = mean + math.sqrt(max((1 - a_prev) / (1 - a_t) * beta, 1e-20)) * _noise(x, generator)
        x = keep(x, float(plan.sigmas[i + 1])) if keep else x
        yield SampleStep(i + 1, n, t, float(plan.sigmas[i + 1]), x, x0)


def ddim(model: Denoiser, x: torch.Tensor, plan: Plan, generator=None, keep: Keep | None = None, eta: float = 0.0, **_) -> Iterator[SampleStep]:
    """DDIM (Song et al. 2021): eta = 0 is deterministic, eta = 1 matches DDPM's noise level."""
    n = len(plan.timesteps)
    for i in range(n):
        t, a_t, a_prev = float(plan.timesteps[i]), plan.alpha_bar(i), plan.alpha_bar(i + 1)
        # 1. predict x0 and the noise in x_t
        x0, eps = x0_and_eps(_call(model, x, t), x, a_t, plan.prediction)
        # 2. the noise to add back, DDIM eq. 16
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        # 3. DDIM eq. 12: rescaled x0 + the direction pointing to x_t + fresh noise
        x = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps
        if eta > 0:
            x = x + sigma * _noise(x, generator)
        x = keep(x, float(plan.sigmas[i + 1])) if keep else x
        yield SampleStep(i + 1, n, t, float(plan.sigmas[i + 1]), x, x0)


def dpmpp_2m(model: Denoiser, x: torch.Tensor, plan: Plan, generator=None, keep: Keep | None = None, **_) -> Iterator[SampleStep]:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): a second-order multistep solver of the
    diffusion ODE in log-SNR time, reusing the previous step's x0 so each step costs one call."""
    yield from _dpmpp(model, x, plan, generator, keep, sde=False)


def dpmpp_2m_sde(model: Denoiser, x: torch.Tensor, plan: Plan, generator=None, keep: Keep | None = None, **_) -> Iterator[SampleStep]:
    """The stochastic variant (diffusers' "sde-dpmsolver++"): the same x0 extrapolation, solving
    the reverse SDE instead of the ODE, so fresh noise each step corrects earlier errors as DDPM does."""
    yield from _dpmpp(model, x, plan, generator, keep, sde=True)


def _dpmpp(model: Denoiser, x: torch.Tensor, plan: Plan, generator, keep: Keep | None, sde: bool) -> Iterator[SampleStep]:
    n = len(plan.timesteps)
    lam = lambda s: -math.log(s) if s > 0 else math.inf  # noqa: E731  log-SNR: log(alpha / sigma_t) = -log(sigma)
    prev_x0, prev_h = None, None
    for i in range(n):
        t, s, s_next = float(plan.timesteps[i]), float(plan.sigmas[i]), float(plan.sigmas[i + 1])
        x0, _ = x0_and_eps(_call(model, x, t), x, plan.alpha_bar(i), plan.prediction)
        noise = _noise(x, generator) if sde else None  # drawn every step, as diffusers does
        if s_next == 0:  # the last step lands on the clean image
            x = x0
        else:
            # in VP terms alpha_t = 1/sqrt(1 + sigma^2) and sigma_t = sigma * alpha_t
            alpha_s, alpha_n = 1 / math.sqrt(1 + s * s), 1 / math.sqrt(1 + s_next * s_next)
            h = lam(s_next) - lam(s)
            d = x0
            if prev_x0 is not None and h > 0 and prev_h > 0:  # 2M: extrapolate x0 linearly in lambda (eq. in
                # Alg. 2, r = h_prev / h). h is 0 only when `steps` equals T and rounding repeats a timestep:
                # that step leaves x as it is, and the extrapolation is skipped around it.
                r = prev_h / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * prev_x0
            ratio = (s_next * alpha_n) / (s * alpha_s)
            if sde:  # the SDE's exact linear part: decay exp(-h) more, and noise with variance 1 - exp(-2h)
                x = ratio * math.exp(-h) * x - alpha_n * math.expm1(-2 * h) * d \
                    + s_next * alpha_n * math.sqrt(-math.expm1(-2 * h)) * noise
            else:  # the exact solution of the ODE's linear part, DPM-Solver++ eq. 9
                x = ratio * x - alpha_n * math.expm1(-h) * d
            prev_h = h
        prev_x0 = x0
        x = keep(x, s_next) if keep else x
        yield SampleStep(i + 1, n, t, s_next, x, x0)


def euler(model: Denoiser, x: torch.Tensor, plan: Plan, generator=None, keep: Keep | None = None, **_) -> Iterator[SampleStep]:
    """Euler's method on the probability-flow ODE (Karras et al. 2022, eq. 3): in sigma space,
    y = x0 + sigma * eps, so dy/dsigma = eps and each step is y += eps * (sigma_next - sigma)."""
    yield from _karras(model, x, plan, keep, heun=False)


def heun(model: Denoiser, x: torch.Tensor, plan: Plan, generator=None, keep: Keep | None = None, **_) -> Iterator[SampleStep]:
    """Heun's second-order method (Karras et al. 2022, Algorithm 1): take an Euler step, look at
    eps there too, and step again with the average. Two model calls per step, except the last."""
    yield from _karras(model, x, plan, keep, heun=True)


def _karras(model: Denoiser, x: torch.Tensor, plan: Plan, keep: Keep | None, heun: bool) -> Iterator[SampleStep]:
    if plan.prediction == "flow":
        yield from _flow(model, x, plan, keep, heun)
        return
    n = len(plan.timesteps)
    vp = lambda y, s: y / math.sqrt(1 + s * s)  # noqa: E731  sigma space -> the model's scale
    y = x * math.sqrt(1 + float(plan.sigmas[0]) ** 2)  # the model's scale -> sigma space
    for i in range(n):
        t, s, s_next = float(plan.timesteps[i]), float(plan.sigmas[i]), float(plan.sigmas[i + 1])
        xt = vp(y, s)
        x0, eps = x0_and_eps(_call(model, xt, t), xt, plan.alpha_bar(i), plan.prediction)
        y_next = y + eps * (s_next - s)  # Euler step
        # Heun's correction: average the slopes at both ends. The trapezoid rule needs eps to change
        # little across the step; from a cosine schedule's sigma_max (~2e4) to the next level (~3) it
        # does not, and the average would be off by (eps - eps_next) * 1e4. Such a step (sigma shrinking
        # more than 10x) stays an Euler step, which from pure noise lands on the model's x0 as DDIM does.
        if heun and s_next > 0 and s <= 10 * s_next:
            t_next = float(plan.timesteps[i + 1])
            xt_next = vp(y_next, s_next)
            _, eps_next = x0_and_eps(_call(model, xt_next, t_next), xt_next, plan.alpha_bar(i + 1), plan.prediction)
            y_next = y + (eps + eps_next) / 2 * (s_next - s)
        y = y_next
        if keep:
            y = keep(vp(y, s_next), s_next) * math.sqrt(1 + s_next * s_next)
        yield SampleStep(i + 1, n, t, s_next, vp(y, s_next), x0)


def reflow(model: Denoiser, x: torch.Tensor, plan: Plan, generator=None, keep: Keep | None = None, **_) -> Iterator[SampleStep]:
    """A distilled student's sampler (distill.py): Euler on its nearly straight flow, over the uniform
    grid of make_plan; one step is x0 = z - v(z, 1)."""
    check(plan.prediction == "flow", "the reflow sampler is for a distilled rectified-flow student (genlab distill)")
    yield from _flow(model, x, plan, keep, heun=False)


def _flow(model: Denoiser, x: torch.Tensor, plan: Plan, keep: Keep | None, heun: bool) -> Iterator[SampleStep]:
    """Rectified flow: the model gives the velocity v = dx/dt, so Euler is x += v * (t_next - t)."""
    n = len(plan.timesteps)
    for i in range(n):
        t, t_next = float(plan.sigmas[i]), float(plan.sigmas[i + 1])
        v = _call(model, x, float(plan.timesteps[i]))
        x0 = x - t * v  # x_t = (1 - t) x0 + t eps and v = eps - x0 give x0 = x_t - t v
        x_next = x + v * (t_next - t)
        if heun and t_next > 0:
            v_next = _call(model, x_next, float(plan.timesteps[i + 1]))
            x_next = x + (v + v_next) / 2 * (t_next - t)
        x = keep(x_next, t_next) if keep else x_next
        yield SampleStep(i + 1, n, float(plan.timesteps[i]), t_next, x, x0)


SAMPLERS: dict[str, Callable[..., Iterator[SampleStep]]] = {
    "ddpm": ddpm,
    "ddim": ddim,
    "dpmpp": dpmpp_2m,
    "dpmpp-sde": dpmpp_2m_sde,
    "euler": euler,
    "heun": heun,
    "reflow": reflow,
}


def check_sampler(name: str | None) -> None:
    """None (the model's default) or a name in SAMPLERS; else a one-line error naming them."""
    check(name is None or name in SAMPLERS, f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}")


def samplers_for(schedule: NoiseSchedule | FlowSchedule) -> list[str]:
    """The samplers make_plan accepts for a model with this schedule."""
    if isinstance(schedule, FlowSchedule):
        return ["euler", "heun", "reflow"]
    return [name for name in SAMPLERS if name != "reflow"]


def model_calls(sampler: str, steps: int) -> int:
    """How many times the sampler calls the model for `steps` steps (heun: at most; see _karras)."""
    return 2 * steps - 1 if sampler == "heun" else steps
