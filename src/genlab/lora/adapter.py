"""LoRA (Hu et al. 2021): fine-tune a frozen model by learning a low-rank update of its linear layers.

For a frozen weight W (out, in), LoRA learns A (r, in) and B (out, r), B starting at zero:

    h = W x + (alpha / r) * B (A x)            # training: the base and the adapter side by side
    W' = W + (alpha / r) * B @ A               # after training: merged, so decoding costs nothing extra

r is far smaller than in and out, so the adapter is a few hundred thousand numbers where W has
millions. PEFT does the training side (it wraps the chosen nn.Linear layers, and its folder,
adapter_config.json + adapter_model.safetensors, is the format everyone reads). The merge is
written here, because genlab's own Llama fuses q/k/v into one matrix and needs the update
applied to the Hugging Face weights before it fuses them; tests check it against PEFT's own
merge_and_unload().
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from genlab.errors import GenlabError, check

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


def layer_names(model: torch.nn.Module, kind: type = torch.nn.Linear) -> list[str]:
    """The short names of a model's layers of one kind, the values --targets accepts: q_proj, v_proj,
    ... for an LLM; to_q, to_out.0, time_emb_proj (linear) and conv1, conv2 (convolutions) for a UNet."""

    def short(name: str) -> str:
        parts = name.split(".")
        return ".".join(parts[-2:]) if parts[-1].isdigit() else parts[-1]

    names = {short(name) for name, m in model.named_modules() if isinstance(m, kind)}
    return sorted(names - {"lm_head"})


def lora_config(model: torch.nn.Module, rank: int, alpha: float | None, dropout: float, targets: str, **extra):
    """A peft.LoraConfig, after checking the options: targets is 'all-linear' or a comma-separated list."""
    from peft import LoraConfig

    check(isinstance(rank, int) and rank >= 1, f"--rank must be an integer of at least 1, got {rank}")
    check(alpha is None or alpha > 0, f"--alpha must be positive, got {alpha}")
    check(0 <= dropout < 1, f"--dropout must be in [0, 1), got {dropout}")
    linear, conv = layer_names(model), layer_names(model, torch.nn.Conv2d)
    modules = []
    for t in (t.strip() for t in targets.split(",")):
        modules += linear if t == "all-linear" else [t] if t else []
    unknown = [t for t in modules if t not in linear + conv]
    check(modules and not unknown, f"--targets: unknown layer(s) {', '.join(unknown) or '(none given)'}; this model's "
                                   f"linear layers are {', '.join(linear)}" + (f"; its convolutions {', '.join(conv)}" if conv else "")
                                   + "; or all-linear")
    modules = sorted(set(modules))
    return LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else 2 * rank, lora_dropout=dropout,
                      target_modules=modules, **extra)


@dataclass
class Adapter:
    """A PEFT adapter folder, read without PEFT: its config and its A and B matrices by layer."""

    folder: Path
    config: dict
    weights: dict[str, torch.Tensor]

    @classmethod
    def load(cls, folder: str | Path) -> "Adapter":
        from safetensors.torch import load_file

        folder = Path(folder).expanduser()
        check(folder.is_dir(), f"adapter {str(folder)!r} is not a folder", "adapter")
        check((folder / CONFIG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file(),
              f"adapter {str(folder)!r} is not a PEFT adapter folder: it needs {CONFIG_FILE} and {WEIGHTS_FILE}", "adapter")
        from safetensors import SafetensorError

        try:
            config = json.loads((folder / CONFIG_FILE).read_text())
            weights = load_file(str(folder / WEIGHTS_FILE))
        except (OSError, ValueError, SafetensorError) as e:
            raise GenlabError(f"adapter {str(folder)!r} cannot be read: {str(e).splitlines()[0][:200]}", "adapter") from None
        where = f"adapter {str(folder)!r}"
        check(isinstance(config, dict) and config.get("peft_type") == "LORA",
              f"{where} is a {config.get('peft_type') if isinstance(config, dict) else 'broken'} adapter; genlab applies LoRA adapters", "adapter")
        check(isinstance(config.get("lora_alpha"), (int, float)), f"{where}: {CONFIG_FILE} has no lora_alpha", "adapter")
        check(not config.get("use_dora"), f"{where} is a DoRA adapter; genlab merges plain LoRA only", "adapter")
        odd = [k for k in weights if ".lora_A." not in k and ".lora_B." not in k]
        check(not odd, f"{where} holds weights genlab cannot merge (e.g. {odd[0] if odd else ''}): only lora_A/lora_B "
                       "pairs of linear and convolution layers", "adapter")
        unpaired = [k for k in weights if ".lora_A." in k and k.replace(".lora_A.", ".lora_B.") not in weights]
        check(not unpaired, f"{where} is incomplete: {unpaired[0] if unpaired else ''} has no lora_B", "adapter")
        return cls(folder, config, weights)

    @classmethod
    def for_model(cls, folder: str | Path, model: str) -> "Adapter":
        """Load, refusing an adapter recorded as trained on another base model."""
        return cls.load(folder).check_base(model)

    def check_base(self, model: str) -> "Adapter":
        """Refuse `model` unless the adapter records no base, or this one (the same name, or the same folder)."""
        base = self.base_model
        if base and base != model:
            here, there = Path(base).expanduser(), Path(model).expanduser()
            check(here.exists() and here.resolve() == there.resolve(),
                  f"--adapter {str(self.folder)!r} was trained on {base!r}, not {model!r}; use --model {base}")
        return self

    @property
    def base_model(self) -> str | None:
        return self.config.get("base_model_name_or_path")

    def scale(self, layer: str, r: int) -> float:
        """alpha / r, or alpha / sqrt(r) for rsLoRA. r is the layer's own (from A's shape); alpha may be set
        per layer by alpha_pattern, whose keys name a layer by its end or as a regular expression, as in PEFT."""
        alpha = self.config["lora_alpha"]
        for key, value in (self.config.get("alpha_pattern") or {}).items():
            if layer == key or layer.endswith("." + key) or re.fullmatch(key, layer):
                alpha = value
                break
        return alpha / (r ** 0.5 if self.config.get("use_rslora") else r)

    def updates(self) -> dict[str, torch.Tensor]:
        """{layer name as in the base model: the dense update (alpha/r) B @ A}, e.g. 'model.layers.0.self_attn.q_proj'."""
        out = {}
        for key, a in self.weights.items():
            if ".lora_A." not in key:
                continue
            b = self.weights[key.replace(".lora_A.", ".lora_B.")]
            layer = key.split(".lora_A.")[0].removeprefix("base_model.model.")
            # linear: (out, r) @ (r, in); convolution: A is (r, in, kh, kw) and B (out, r, 1, 1), so the same product
            # on flattened kernels gives (out, in * kh * kw), reshaped back to the kernel
            delta = b.float().flatten(1) @ a.float().flatten(1)
            delta = self.scale(layer, a.shape[0]) * delta.reshape(b.shape[0], *a.shape[1:])
            out[layer] = delta.T if self.config.get("fan_in_fan_out") else delta  # GPT-2's Conv1D stores W transposed
        return out


def merge_into(state: dict[str, torch.Tensor], adapter: Adapter, scale: float = 1.0, prefix: str = "") -> dict:
    """W' = W + scale * (alpha/r) B @ A for every adapted layer of a state dict (a new dict; `state` is unchanged).
    A layer the adapter names but the state lacks, or of another shape, means the adapter was trained for
    another base model: one clear error."""
    merged = dict(state)
    for layer, delta in adapter.updates().items():
        key = f"{prefix}{layer}.weight"
        check(key in state, f"adapter {str(adapter.folder)!r} does not fit this model: it adapts {layer!r}, which this "
                            f"model does not have (it was trained on {adapter.base_model or 'another model'})", "adapter")
        w = state[key]
        check(tuple(w.shape) == tuple(delta.shape),
              f"adapter {str(adapter.folder)!r} does not fit this model: {layer} is {tuple(w.shape)} here and "
              f"{tuple(delta.shape)} in the adapter (it was trained on {adapter.base_model or 'another model'})", "adapter")
        merged[key] = (w.float() + scale * delta.to(w.device)).to(w.dtype)
    return merged
