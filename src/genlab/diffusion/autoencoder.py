"""The autoencoder of latent diffusion: pixels <-> a small latent the denoiser works in.

Stable Diffusion's VAE turns 512x512x3 into 64x64x4; genlab's turns 32x32x3 into 8x8x4,
the same factor of 4 per side, which makes a text-conditioned UNet ~16x cheaper per step
than one in pixel space. It is diffusers' AutoencoderKL (the class of SD's VAE) at
laptop size, trained with an L1 reconstruction loss and a small KL term (Rombach et al.
2022, sec. 3; SD adds a perceptual and a GAN loss, which flat-coloured shapes do not need).

    vae = build_vae()
    z = encode(vae, x)        # (B, 3, 32, 32) in [-1, 1] -> (B, 4, 8, 8), scaled to unit variance
    x = decode(vae, z)        # and back

`scaling_factor` (SD's 0.18215) makes the latents' standard deviation 1, the scale the
noise schedule assumes; genlab measures it on training latents after the VAE is trained.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

KL_WEIGHT = 1e-6  # as SD's VAE: the latent stays nearly deterministic, only kept from drifting in scale


def build_vae(resolution: int = 32, widths: tuple[int, ...] = (32, 64, 64), latent_channels: int = 4):
    """An AutoencoderKL that shrinks each side by 2^(len(widths) - 1)."""
    from diffusers import AutoencoderKL  # heavy import, only where the network is built

    n = len(widths)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                         up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(widths), layers_per_block=1,
                         latent_channels=latent_channels, norm_num_groups=16, sample_size=resolution)


def encode(vae, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pixels (B, 3, H, W) in [-1, 1] -> scaled latents (B, 4, H/f, W/f): the posterior's mean, or a
    sample from it when a generator is given (as in training)."""
    posterior = vae.encode(x.to(vae.dtype)).latent_dist
    z = posterior.mean if generator is None else posterior.mean + posterior.std * _randn(posterior.mean, generator)
    return z * vae.config.scaling_factor


def decode(vae, z: torch.Tensor) -> torch.Tensor:
    """Scaled latents -> pixels in about [-1, 1]."""
    return vae.decode(z.to(vae.dtype) / vae.config.scaling_factor).sample


def vae_loss(vae, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """L1 reconstruction of a posterior sample (mean over pixels), plus KL(q(z|x) || N(0, I)) (sum over
    the latent, mean over the batch)."""
    posterior = vae.encode(x).latent_dist
    z = posterior.mean + posterior.std * _randn(posterior.mean, generator)
    recon = vae.decode(z).sample
    kl = 0.5 * (posterior.mean**2 + posterior.var - 1 - posterior.logvar).flatten(1).sum(1).mean()
    return F.l1_loss(recon, x) + KL_WEIGHT * kl


@torch.no_grad()
def measure_scaling(vae, x: torch.Tensor) -> float:
    """1 / std of the unscaled latents of `x`: the factor that gives the denoiser unit-variance data."""
    return float(1 / vae.encode(x.to(vae.dtype)).latent_dist.mean.float().std())


def _randn(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(like.shape, generator=generator, dtype=like.dtype).to(like.device)
