"""Noise schedules and the forward process: how diffusion turns an image into noise.

DDPM (Ho et al. 2020) adds a little Gaussian noise at each of T steps, with variances
beta_1..beta_T. Because Gaussians compose, x_t can be drawn from x_0 in one shot (eq. 4):

    x_t = sqrt(alpha_bar_t) * x0 + sqrt(1 - alpha_bar_t) * eps,   alpha_bar_t = prod_{s<=t} (1 - beta_s)

Training shows the denoiser x_t and t and asks for eps (or for v, eq. below); sampling
runs the process backwards. This module is the only place x_t is made from x0.

    sched = NoiseSchedule.cosine()
    xt = sched.add_noise(x0, eps, t)         # t: (B,) integer timesteps in [0, T)

Rectified flow (Liu et al. 2022; flow matching, Lipman et al. 2022) is the other forward
process here: a straight line from data to noise, x_t = (1 - t) x0 + t eps for t in [0, 1],
whose velocity dx_t/dt = eps - x0 is the training target (FlowSchedule).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass
class NoiseSchedule:
    betas: torch.Tensor  # (T,) float32: the variance added at each step
    alpha_bar: torch.Tensor = field(init=False)  # (T,) the fraction of the signal's variance left at step t

    def __post_init__(self):
        self.alpha_bar = torch.cumprod(1.0 - self.betas, dim=0)

    @classmethod
    def linear(cls, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "NoiseSchedule":
        """DDPM's schedule (Ho et al. 2020, section 4): betas evenly spaced from beta_start to beta_end."""
        return cls(torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float32))

    @classmethod
    def cosine(cls, num_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> "NoiseSchedule":
        """Improved DDPM (Nichol & Dhariwal 2021, eq. 17): alpha_bar(t) = cos^2((t/T + s) / (1 + s) * pi/2).

        It destroys information more evenly than the linear schedule, which wastes its last
        steps on near-pure noise, so it suits small images such as 8x8 digits.
        """
        f = lambda t: math.cos((t + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
        betas = [min(1 - f((i + 1) / num_steps) / f(i / num_steps), max_beta) for i in range(num_steps)]
        return cls(torch.tensor(betas, dtype=torch.float32))

    @property
    def num_steps(self) -> int:
        return self.betas.shape[0]

    def _coefficients(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t), shaped (B, 1, 1, ...) to broadcast over `like`."""
        ab = self.alpha_bar.to(like.device)[t.to(like.device)]
        shape = (-1,) + (1,) * (like.dim() - 1)
        return ab.sqrt().view(shape).to(like.dtype), (1 - ab).sqrt().view(shape).to(like.dtype)

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0), DDPM eq. 4: x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps."""
        a, b = self._coefficients(t, x0)
        return noised(x0, eps, a, b)

    def velocity(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The v-prediction target (Salimans & Ho 2022, section 4): v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0."""
        a, b = self._coefficients(t, x0)
        return a * eps - b * x0


def noised(x0: torch.Tensor, eps: torch.Tensor, signal, noise) -> torch.Tensor:
    """The one line every forward process shares: x_t = signal * x0 + noise * eps."""
    return signal * x0 + noise * eps


@dataclass
class FlowSchedule:
    """Rectified flow: x_t = (1 - t) x0 + t eps, t in [0, 1]; the model sees the timestep 1000 t."""

    num_steps: int = 1000  # the model's timestep scale, as for NoiseSchedule

    def draw_t(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        return torch.rand(batch, generator=generator)  # (B,) uniform in [0, 1)

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.view((-1,) + (1,) * (x0.dim() - 1)).to(x0.dtype)
        return noised(x0, eps, 1 - t, t)

    @staticmethod
    def velocity(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The training target: d x_t / dt = eps - x0, the same at every t on the straight line."""
        return eps - x0
