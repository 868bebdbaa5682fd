"""The denoiser: a small class-conditional UNet, and the folder format genlab saves it in.

The network is diffusers' UNet2DModel. Its timestep embedding is added to every residual
block, and `num_class_embeds` adds a learned class embedding to it; one extra class,
index `num_classes`, means "no class", which is what classifier-free guidance needs
(Ho & Salimans 2022). genlab only chooses the sizes, which is where the 2-core budget
lives: on one thread, (32, 64, 64) channels train at ~2.7 steps/s at 16x16 and ~8.5 steps/s
at 8x8, the bundled digits model's size (it draws 16x16: see `upsample`).

A model folder holds:
    genlab.json        DiffusionConfig: the sizes, the schedule, what the model predicts, the class names
    model.safetensors  the weights (the EMA copy, for a trained model)
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import GenlabError, check
from ..data.digits import DIGIT_WORDS, enlarge
from .samplers import check_sampler
from .schedules import FlowSchedule, NoiseSchedule

CONFIG_FILE = "genlab.json"
BACKBONES = ("unet", "dit")  # the denoising networks `genlab train diffusion --backbone` builds
WEIGHTS_FILE = "model.safetensors"


@dataclass
class DiffusionConfig:
    resolution: int = 16
    channels: int = 1  # 1 for greyscale, 3 for RGB
    widths: tuple[int, ...] = (32, 64, 64)  # UNet channels per level; each level halves the resolution
    attention_levels: tuple[int, ...] = (2,)  # levels with self-attention (cheap at the lowest resolution)
    class_names: list[str] = field(default_factory=list)  # empty: an unconditional model
    schedule: str = "cosine"  # "cosine", "linear" or "flow" (rectified flow), see schedules.py
    prediction: str = "v"  # "v" or "eps" for diffusion; "flow" (the velocity eps - x0) for rectified flow
    train_steps: int = 1000  # T, the number of noise levels
    guidance: float = 1.25  # the default classifier-free guidance scale for sampling (the digits FID sweep in docs/benchmarks.md)
    sampler: str | None = None  # the default sampler; None: dpmpp (euler for rectified flow)
    sampling_steps: int = 20  # the default number of sampling steps
    dropout: float = 0.0  # in every residual block while training (0.1 cuts the bundled model's held-out loss ~15%, not its FID)
    upsample: int = 1  # pictures are resolution * upsample pixels wide: the samples, enlarged bilinearly (see Denoiser.decode)
    backbone: str = "unet"  # "unet" (diffusers' UNet2DModel) or "dit" (a transformer, dit.py)
    dit: tuple[int, int, int, int] = (2, 128, 6, 4)  # the DiT's patch size, width, depth and heads
    distilled: dict | None = None  # a few-step student: what distill.py recorded (teacher, method, steps)
    kind: str = "diffusion"  # what the folder holds (registry.py reads it)

    def __post_init__(self):
        self.widths, self.attention_levels, self.dit = tuple(self.widths), tuple(self.attention_levels), tuple(self.dit)
        check(self.backbone in BACKBONES, f"unknown backbone {self.backbone!r}; choose one of: {', '.join(BACKBONES)}")
        check(len(self.dit) == 4 and self.resolution % self.dit[0] == 0 and self.dit[1] % (4 * self.dit[3]) == 0,
              f"dit must be (patch, width, depth, heads) with the patch dividing the image size {self.resolution} "
              f"and the width a multiple of 4 x heads, got {self.dit}")
        check(self.kind == "diffusion", f"{CONFIG_FILE}: kind must be 'diffusion', got {self.kind!r}")
        check(self.schedule in ("cosine", "linear", "flow"), f"schedule must be cosine, linear or flow, got {self.schedule!r}")
        if self.schedule == "flow":
            self.prediction = "flow"
        check(self.prediction in ("v", "eps", "flow") and (self.prediction == "flow") == (self.schedule == "flow"),
              f"prediction must be v or eps, got {self.prediction!r}")
        check_sampler(self.sampler)
        check(self.sampling_steps >= 1, f"sampling_steps must be at least 1, got {self.sampling_steps}")
        check(0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}")
        check(isinstance(self.upsample, int) and 1 <= self.upsample <= 16, f"upsample must be an integer from 1 to 16, got {self.upsample!r}")
        check(self.backbone == "dit" or self.resolution % 2 ** (len(self.widths) - 1) == 0,
              f"image size {self.resolution} must be a multiple of {2 ** (len(self.widths) - 1)} for a {len(self.widths)}-level UNet; "
              f"pass --resolution N with N a multiple of {2 ** (len(self.widths) - 1)}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def noise_schedule(self) -> NoiseSchedule | FlowSchedule:
        if self.schedule == "flow":
            return FlowSchedule(self.train_steps)
        return getattr(NoiseSchedule, self.schedule)(self.train_steps)

    @classmethod
    def from_json(cls, text: str) -> "DiffusionConfig":
        return config_from_json(cls, text)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)


def config_from_json(cls, text: str):
    """A config dataclass from genlab.json, strictly: bad JSON, unknown keys and bad values are
    one-line errors (the text-to-image config reads its genlab.json the same way)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise GenlabError(f"{CONFIG_FILE} is not valid JSON: {e}") from None
    check(isinstance(data, dict), f"{CONFIG_FILE} must hold a JSON object")
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
    check(not unknown, f"unknown keys in {CONFIG_FILE}: {', '.join(unknown)}")
    try:
        return cls(**data)
    except TypeError as e:
        raise GenlabError(f"bad value in {CONFIG_FILE}: {e}") from None


class Denoiser(torch.nn.Module):
    """model(xt, t, labels) -> eps or v. labels: (B,) int64, with num_classes meaning "unconditional".
    The network is a UNet (`self.unet`) or, with backbone "dit", a transformer (`self.dit`)."""

    def __init__(self, config: DiffusionConfig):
        super().__init__()
        self.config = config
        if config.backbone == "dit":
            from .dit import DiT

            patch, dim, depth, heads = config.dit
            self.dit = DiT(config.resolution, config.channels, config.num_classes, patch, dim, depth, heads)
            return
        levels = range(len(config.widths))
        down = ["AttnDownBlock2D" if i in config.attention_levels else "DownBlock2D" for i in levels]
        self.unet = _unet_class()(
            sample_size=config.resolution,
            in_channels=config.channels,
            out_channels=config.channels,
            block_out_channels=config.widths,
            layers_per_block=1,
            down_block_types=tuple(down),
            up_block_types=tuple(b.replace("Down", "Up") for b in reversed(down)),
            norm_num_groups=min(16, min(config.widths)),
            attention_head_dim=32,
            num_class_embeds=config.num_classes + 1 if config.num_classes else None,
            dropout=config.dropout,
        )

    def forward(self, xt: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.config.num_classes == 0:
            labels = None
        elif labels is None:
            labels = torch.full((xt.shape[0],), self.config.num_classes, device=xt.device)
        t = t.to(xt.device)
        if not (self.training or torch.is_grad_enabled() or torch.is_autocast_enabled("cpu")) and xt.device.type == "cpu":
            return self._replay(xt, t, labels)
        return self.network(xt, t, labels)

    def network(self, xt: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if self.config.backbone == "dit":
            return self.dit(xt, t, labels)
        return self.unet(xt, t, class_labels=labels, return_dict=False)[0]

    # The hot path. One image at a time, a step of this small network is mostly Python: diffusers
    # walks ~60 modules and their checks for ~1.6 ms of arithmetic, and the call takes 3.3 ms on
    # 2 cores. So once an input shape has come HOT_CALLS times in inference on the CPU (a server,
    # a benchmark, a long sampling loop: not a one-off `genlab image`, where tracing would cost
    # more than it saves), the network is traced with torch.jit.trace and replayed as one graph.
    # The trace runs the same kernels on the same weights (it shares the parameters), so its
    # outputs are bit-for-bit the eager ones (tests/test_dit.py checks), and seeds reproduce
    # whichever path served them. Anything the tracer cannot take falls back to eager for good.

    HOT_CALLS = 50

    def _replay(self, xt: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        net, weights = self.dit if self.config.backbone == "dit" else self.unet, next(self.parameters())
        key = (xt.shape, xt.dtype, t.shape, t.dtype, labels is None, id(net), weights.data_ptr(), weights.dtype)
        hot = self.__dict__.setdefault("_hot", {})  # key -> calls so far, then the traced graph (None: untraceable)
        graph = hot.get(key)
        if not isinstance(graph, torch.jit.ScriptModule):
            with self.__dict__.setdefault("_hot_lock", threading.Lock()):  # the server calls from several threads
                graph = hot.get(key, 0)
                if isinstance(graph, int):
                    graph = hot[key] = _trace(self, xt, t, labels) if graph + 1 >= self.HOT_CALLS and len(hot) <= 64 else graph + 1
        if not isinstance(graph, torch.jit.ScriptModule):
            return self.network(xt, t, labels)
        return graph(xt, t) if labels is None else graph(xt, t, labels)

    def __getstate__(self):  # copies (EMA, a student from its teacher) start cold: no traced graphs
        return {k: v for k, v in self.__dict__.items() if k not in ("_hot", "_hot_lock")}

    # What ImageGenerator asks of every model (text2image.py's latent model answers the same):
    # the prompt as keyword inputs for forward, and the way between pixels and the sampled space.

    def condition(self, prompt: str, n: int, negative: bool = False) -> dict[str, torch.Tensor]:  # a negative names a class too
        if self.config.num_classes == 0:
            return {}
        label = parse_prompt(prompt, self.config.class_names)
        return {"labels": torch.full((n,), label, dtype=torch.long, device=self.device)}

    def null_condition(self, n: int) -> dict[str, torch.Tensor]:
        if self.config.num_classes == 0:
            return {}
        return {"labels": torch.full((n,), self.config.num_classes, dtype=torch.long, device=self.device)}

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return self.config.channels, self.config.resolution, self.config.resolution

    @property
    def pixel_shape(self) -> tuple[int, int, int]:
        size = self.config.resolution * self.config.upsample
        return self.config.channels, size, size

    # With upsample > 1 the network denoises small pictures and shows them enlarged. The bundled
    # digits model does this: scikit-learn's digits are 8x8, and its 16x16 training pictures
    # (data.digits) are only their bilinear enlargements, so denoising the 8x8 originals and
    # enlarging the result the same way gives the same kind of picture for a third of the time per
    # step, with no empty dimensions to learn (docs/benchmarks.md, image quality).

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Samples -> pixels: the enlargement data.digits makes its 16x16 digits with."""
        return x if self.config.upsample == 1 else enlarge(x.clamp(-1, 1), self.pixel_shape[-1])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels -> samples (an img2img init picture): the area average of each upsample x upsample block."""
        return x if self.config.upsample == 1 else torch.nn.functional.avg_pool2d(x, self.config.upsample)

    def mask_to_sample(self, mask: torch.Tensor) -> torch.Tensor:
        """An inpainting mask at pixel size -> sample size: a sample pixel is repainted if any pixel it covers is."""
        return mask if self.config.upsample == 1 else torch.nn.functional.max_pool2d(mask, self.config.upsample)


class _Network(torch.nn.Module):
    """Denoiser.network as a module of its own, the form torch.jit.trace takes."""

    def __init__(self, denoiser: Denoiser):
        super().__init__()
        self.denoiser = denoiser

    def forward(self, xt: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.denoiser.network(xt, t, labels)


def _trace(model: Denoiser, xt: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None):
    import warnings

    inputs = (xt, t) if labels is None else (xt, t, labels)
    try:
        with warnings.catch_warnings():  # the tracer warns about every shape it fixes; the key holds the shapes
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(_Network(model), inputs, check_trace=False)
        same = torch.equal(traced(*inputs), model.network(xt, t, labels))
    except Exception:  # noqa: BLE001 - a network the tracer cannot take runs eager
        return None
    return traced if same else None


def parse_prompt(prompt: str, class_names: list[str]) -> int:
    """Which class a prompt names: "7", "seven" and "a handwritten 7" all give 7 for digits."""
    text = " " + " ".join(re.findall(r"[a-z0-9]+", prompt.lower())) + " "
    names = [" " + " ".join(re.findall(r"[a-z0-9]+", c.lower())) + " " for c in class_names]  # "golden_retriever" -> " golden retriever "
    found = {i for i, name in enumerate(names) if name.strip() and name in text}  # whole words only: "catapult" is not "cat"
    if class_names == [str(i) for i in range(10)]:
        found |= {i for i, w in enumerate(DIGIT_WORDS) if f" {w} " in text}
    accepted = ", ".join(class_names) + (" (or their names: zero ... nine)" if class_names == [str(i) for i in range(10)] else "")
    check(len(found) == 1, f"this model draws one of: {accepted}; "
          + (f"the prompt {prompt!r} names none of them" if not found else f"the prompt {prompt!r} names several"))
    return found.pop()


def _unet_class():
    from diffusers import UNet2DModel  # heavy import, only where the network is built

    class UNet(UNet2DModel):
        """UNet2DModel with an O(1) `dtype`. diffusers' property walks every submodule to find it
        (~1 ms), and UNet2DModel.forward asks twice per call: a fifth of a 16x16 step on 2 cores.
        All of genlab's weights share one dtype, so the first convolution's answers for all."""

        @property
        def dtype(self) -> torch.dtype:
            return self.conv_in.weight.dtype

    return UNet


def save_model(model: Denoiser, folder: Path, state: dict[str, torch.Tensor] | None = None) -> None:
    """Write genlab.json and model.safetensors into `folder` (use store.atomic_dir for a safe swap)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(model.config.to_json())
    weights = state if state is not None else model.state_dict()
    save_file({k: v.detach().contiguous() for k, v in weights.items()}, str(folder / WEIGHTS_FILE))


def load_model(folder: Path, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Denoiser:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    check((folder / CONFIG_FILE).is_file(), f"{folder} is not a genlab diffusion model (no {CONFIG_FILE})")
    config = DiffusionConfig.from_json((folder / CONFIG_FILE).read_text())
    model = Denoiser(config)
    try:
        state = load_file(str(folder / WEIGHTS_FILE))
        model.load_state_dict(state)
    except (SafetensorError, FileNotFoundError, RuntimeError) as e:
        raise GenlabError(f"cannot load weights from {folder / WEIGHTS_FILE}: {str(e).splitlines()[0]}") from None
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)
