"""The forward process against diffusers' schedulers (the reference), and its defining properties."""

import diffusers
import pytest
import torch

from genlab.diffusion.schedules import NoiseSchedule


@pytest.mark.parametrize("name,ours,theirs", [
    ("linear", NoiseSchedule.linear(), dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)),
    ("cosine", NoiseSchedule.cosine(), dict(beta_schedule="squaredcos_cap_v2")),
])
def test_schedule_and_noising_match_diffusers(name, ours, theirs):
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction", **theirs)
    torch.testing.assert_close(ours.betas, ref.betas, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours.alpha_bar, ref.alphas_cumprod, atol=1e-6, rtol=1e-5)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(6, 3, 8, 8, generator=g), torch.randn(6, 3, 8, 8, generator=g)
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    torch.testing.assert_close(ours.add_noise(x0, eps, t), ref.add_noise(x0, eps, t), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours.velocity(x0, eps, t), ref.get_velocity(x0, eps, t), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("sched", [NoiseSchedule.linear(), NoiseSchedule.cosine()])
def test_signal_fades_into_unit_gaussian(sched):
    ab = sched.alpha_bar
    assert torch.all(ab[1:] < ab[:-1]) and ab[0] > 0.99 and ab[-1] < 1e-3
    x0 = torch.full((4096,), 0.8)
    xt = sched.add_noise(x0, torch.randn(4096, generator=torch.Generator().manual_seed(1)), torch.full((4096,), 999))
    assert abs(xt.mean()) < 0.06 and abs(xt.std() - 1) < 0.05  # x_T is (almost) pure noise
