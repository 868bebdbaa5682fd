"""The transformer every genlab language model uses, written to be read: train it, sample it, decode Llamas with it.

SmolLM2, Llama 2/3 (default RoPE), Mistral without sliding windows and TinyLlama all
share this shape, and so do the models genlab trains itself (the text GPT, the pixel GPT,
the masked-diffusion LM): token embedding -> N x [RMSNorm -> attention (RoPE, grouped
query heads) -> residual -> RMSNorm -> SwiGLU MLP -> residual] -> RMSNorm -> logits.
The one switch is the mask: causal (a GPT) or bidirectional (the masked-diffusion LM).

Why not transformers' LlamaForCausalLM? For one token at a time on a CPU its per-step
bookkeeping (dynamic cache objects, mask building, generic hooks) costs as much as the
arithmetic. Here the cache is two preallocated tensors, the q/k/v and gate/up projections
are fused into one matmul each, and the weights can be kept in half precision. And the
attention with its KV cache is what a reader comes to learn, so it is written out here.
Weights still travel as ordinary Hugging Face folders (from_hf / to_hf / save_hf), and
tests/test_llama.py proves the logits match transformers.

    model = Transformer(TransformerConfig(vocab_size=512, dim=64, n_layers=2, n_heads=2))
    loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())   # training
    with torch.inference_mode():                                                # decoding
        cache = model.new_cache(max_len=256)
        logits = model(torch.tensor([[1, 2, 3]]), cache)   # (1, 3, vocab); then one token at a time
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class UnsupportedArchitecture(ValueError):
    """The config describes a model this module does not implement (the caller falls back)."""


@dataclass
class TransformerConfig:
    vocab_size: int
    dim: int  # width of the residual stream
    n_layers: int
    n_heads: int  # query heads
    n_kv_heads: int = 0  # key/value heads, 0 = n_heads; n_heads // n_kv_heads queries share each (GQA)
    head_dim: int = 0  # 0 = dim // n_heads
    hidden_dim: int = 0  # width of the SwiGLU MLP; 0 = about 8/3 dim, a multiple of 64 (as Llama)
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 2048
    tie_embeddings: bool = False
    causal: bool = True  # False: every position attends to the whole sequence (the masked-diffusion LM)

    def __post_init__(self):
        self.n_kv_heads = self.n_kv_heads or self.n_heads
        self.head_dim = self.head_dim or self.dim // self.n_heads
        self.hidden_dim = self.hidden_dim or int(8 * self.dim / 3) // 64 * 64 or 64

    @classmethod
    def from_hf(cls, cfg: dict, causal: bool = True) -> "TransformerConfig":
        """Read a transformers config.json; raise UnsupportedArchitecture for anything else."""
        arch = cfg.get("model_type")
        if arch not in ("llama", "mistral"):
            raise UnsupportedArchitecture(f"model_type {arch!r}")
        rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
            raise UnsupportedArchitecture(f"rope_type {rope.get('rope_type')!r}")
        if cfg.get("attention_bias") or cfg.get("mlp_bias") or cfg.get("sliding_window"):
            raise UnsupportedArchitecture("attention/mlp bias or sliding window")
        if cfg.get("hidden_act", "silu") != "silu":
            raise UnsupportedArchitecture(f"hidden_act {cfg.get('hidden_act')!r}")
        n_heads = cfg["num_attention_heads"]
        return cls(
            vocab_size=cfg["vocab_size"],
            dim=cfg["hidden_size"],
            n_layers=cfg["num_hidden_layers"],
            n_heads=n_heads,
            n_kv_heads=cfg.get("num_key_value_heads") or n_heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // n_heads,
            hidden_dim=cfg["intermediate_size"],
            norm_eps=cfg.get("rms_norm_eps", 1e-5),
            rope_theta=rope.get("rope_theta", cfg.get("rope_theta", 10000.0)),
            max_seq_len=cfg.get("max_position_embeddings", 2048),
            tie_embeddings=cfg.get("tie_word_embeddings", False),
            causal=causal,
        )

    def to_hf(self) -> dict:
        """The transformers LlamaConfig fields of this shape (from_hf's inverse; the mask is the caller's to know)."""
        return dict(vocab_size=self.vocab_size, hidden_size=self.dim, num_hidden_layers=self.n_layers,
                    num_attention_heads=self.n_heads, num_key_value_heads=self.n_kv_heads, head_dim=self.head_dim,
                    intermediate_size=self.hidden_dim, rms_norm_eps=self.norm_eps,
                    rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta},
                    max_position_embeddings=self.max_seq_len, tie_word_embeddings=self.tie_embeddings)


class KVCache:
    """Keys and values of every position seen so far, one preallocated slab per layer.

    Decoding token t only needs q for t, but k and v for 0..t: keeping them here turns
    each step from O(t) recomputation into one row of new work.
    """

    def __init__(self, cfg: TransformerConfig, batch: int, max_len: int, dtype, device):
        shape = (cfg.n_layers, batch, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.pos = 0  # number of positions already written
        self.max_len = max_len


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # computed in fp32 whatever the weights' dtype, as the reference does
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_tables(cfg: TransformerConfig, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every (position, frequency) pair: (max_seq_len, head_dim) each."""
    f32 = dict(dtype=torch.float32, device=device)
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, **f32) / cfg.head_dim))
    angles = torch.outer(torch.arange(cfg.max_seq_len, **f32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)  # (T, hd): each frequency drives two halves
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """Rotate each (x_i, x_{i+hd/2}) pair by its position's angle (RoFormer eq. 34, half-split form)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim, self.causal = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.causal
        # q, k and v projections fused into one matmul: one weight read instead of three
        self.wqkv = nn.Linear(cfg.dim, (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(self, x, cos, sin, cache: KVCache | None, layer: int):
        B, T, _ = x.shape
        nh, nkv, hd = self.n_heads, self.n_kv_heads, self.head_dim
        q, k, v = self.wqkv(x).split([nh * hd, nkv * hd, nkv * hd], dim=-1)
        q = q.view(B, T, nh, hd).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(B, T, nkv, hd).transpose(1, 2)  # (B, nkv, T, hd)
        v = v.view(B, T, nkv, hd).transpose(1, 2)  # (B, nkv, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)

        if cache is None:
            # Training, or a whole sequence at once: softmax(q k^T / sqrt(hd)) v over the given positions,
            # causal or not, through the fused kernel that never materialises the (T, T) score matrix.
            y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, enable_gqa=nh != nkv)
            return self.wo(y.transpose(1, 2).reshape(B, T, nh * hd))

        # append this step's keys/values, then attend over everything cached so far
        start, end = cache.pos, cache.pos + T
        cache.k[layer, :, :, start:end] = k
        cache.v[layer, :, :, start:end] = v
        k, v = cache.k[layer, :, :, :end], cache.v[layer, :, :, :end]  # (B, nkv, S, hd)

        if T == 1:
            # One new query attends to every cached key: softmax(q k^T / sqrt(hd)) v, written out.
            # Each group of g = nh/nkv query heads shares one k/v head (grouped-query attention).
            g = nh // nkv
            q = q.view(B, nkv, g, hd)  # (B, nkv, g, hd)
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)  # (B, nkv, g, S)
            probs = scores.float().softmax(dim=-1).to(q.dtype)
            y = (probs @ v).view(B, nh, 1, hd)  # (B, nh, 1, hd)
        else:
            # Same math for a whole prompt, with a causal mask. A chunk appended to an existing cache
            # (start > 0) needs an explicit mask: query i sees keys 0..start+i.
            mask = None if start == 0 else torch.ones(T, end, dtype=torch.bool, device=x.device).tril(diagonal=start)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=start == 0, enable_gqa=nh != nkv)
        y = y.transpose(1, 2).reshape(B, T, nh * hd)  # (B, T, nh*hd)
        return self.wo(y)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), with gate and up fused into one matmul."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.w_gate_up = nn.Linear(cfg.dim, 2 * cfg.hidden_dim, bias=False)
        self.w_down = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)

    def forward(self, x):
        gate, up = self.w_gate_up(x).chunk(2, dim=-1)
        return self.w_down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, cache, layer):
        x = x + self.attn(self.attn_norm(x), cos, sin, cache, layer)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        # Llama's initialisation (as transformers does it): every matrix N(0, 0.02), the norms 1
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        cos, sin = rope_tables(cfg, "cpu")
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def new_cache(self, max_len: int, batch: int = 1) -> KVCache:
        max_len = min(max_len, self.cfg.max_seq_len)
        return KVCache(self.cfg, batch, max_len, self.lm_head.weight.dtype, self.lm_head.weight.device)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None, last_only: bool = False) -> torch.Tensor:
        """idx (B, T) token ids -> logits (B, T, vocab), float32.

        Without a cache the positions are 0..T-1 and attend among themselves (training, scoring,
        the masked-diffusion LM). With one they come after cache.pos and their keys/values are kept."""
        x = self.hidden_states(idx, cache)
        if last_only:
            x = x[:, -1:]  # prefill only needs the next-token distribution
        return self.lm_head(x).float()

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """idx (B, T) -> the last block's output after the final norm, (B, T, dim): what lm_head reads,
        and what a text model's sentence embedding averages (text/embed.py)."""
        B, T = idx.shape
        pos = 0 if cache is None else cache.pos
        if cache is not None and not self.cfg.causal:
            raise ValueError("a KV cache only serves a causal model: a bidirectional one re-reads the whole sequence")
        limit = self.cfg.max_seq_len if cache is None else cache.max_len
        if pos + T > limit:
            raise ValueError(f"context full: {pos} + {T} tokens > {limit}")
        x = self.embed(idx)  # (B, T, dim)
        dtype = x.dtype
        cos = self.rope_cos[pos : pos + T].to(dtype)  # (T, hd)
        sin = self.rope_sin[pos : pos + T].to(dtype)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, cache, i)
        if cache is not None:
            cache.pos += T
        return self.norm(x)  # (B, T, dim)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied weights are counted once

    # --- Hugging Face folders: transformers' parameter names, our fused matrices ------------

    @classmethod
    def from_hf(cls, config: dict, state: dict[str, torch.Tensor], dtype=torch.float32, device="cpu",
                causal: bool = True) -> "Transformer":
        """Build from a transformers config dict and its state dict (names as in LlamaForCausalLM)."""
        cfg = TransformerConfig.from_hf(config, causal)
        with torch.device("meta"):
            model = cls(cfg)
        g = lambda name: state[name].to(dtype)  # noqa: E731
        ours: dict[str, torch.Tensor] = {"embed.weight": g("model.embed_tokens.weight"), "norm.weight": g("model.norm.weight")}
        if not cfg.tie_embeddings:
            ours["lm_head.weight"] = g("lm_head.weight")
        for i in range(cfg.n_layers):
            p, b = f"model.layers.{i}.", f"blocks.{i}."
            ours[b + "attn.wqkv.weight"] = torch.cat([g(p + f"self_attn.{n}_proj.weight") for n in "qkv"])
            ours[b + "attn.wo.weight"] = g(p + "self_attn.o_proj.weight")
            ours[b + "mlp.w_gate_up.weight"] = torch.cat([g(p + "mlp.gate_proj.weight"), g(p + "mlp.up_proj.weight")])
            ours[b + "mlp.w_down.weight"] = g(p + "mlp.down_proj.weight")
            ours[b + "attn_norm.weight"] = g(p + "input_layernorm.weight")
            ours[b + "mlp_norm.weight"] = g(p + "post_attention_layernorm.weight")
        model.load_state_dict(ours, assign=True, strict=False)
        if cfg.tie_embeddings:
            model.lm_head.weight = model.embed.weight
        cos, sin = rope_tables(cfg, device)
        model.rope_cos, model.rope_sin = cos, sin
        return model.to(device).eval()

    def to_hf(self) -> dict[str, torch.Tensor]:
        """from_hf's inverse: the state dict under LlamaForCausalLM's names, fused matrices split back.
        A tied output layer is left out, as transformers leaves it out."""
        c = self.cfg
        out = {"model.embed_tokens.weight": self.embed.weight, "model.norm.weight": self.norm.weight}
        if not c.tie_embeddings:
            out["lm_head.weight"] = self.lm_head.weight
        for i, blk in enumerate(self.blocks):
            p = f"model.layers.{i}."
            q, k, v = blk.attn.wqkv.weight.split([c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim,
                                                  c.n_kv_heads * c.head_dim])
            gate, up = blk.mlp.w_gate_up.weight.chunk(2)
            out |= {p + "self_attn.q_proj.weight": q, p + "self_attn.k_proj.weight": k, p + "self_attn.v_proj.weight": v,
                    p + "self_attn.o_proj.weight": blk.attn.wo.weight, p + "mlp.gate_proj.weight": gate,
                    p + "mlp.up_proj.weight": up, p + "mlp.down_proj.weight": blk.mlp.w_down.weight,
                    p + "input_layernorm.weight": blk.attn_norm.weight,
                    p + "post_attention_layernorm.weight": blk.mlp_norm.weight}
        return {k: v.detach().clone() for k, v in out.items()}  # own storage each: safetensors refuses shared views


def load_hf(folder: str | Path, causal: bool = True, dtype=torch.float32, device="cpu") -> Transformer:
    """A Hugging Face Llama folder (config.json + *.safetensors) as genlab's transformer, in eval mode.

        model = load_hf("src/genlab/weights/pydoc-mdlm", causal=False)
    """
    from ..store import load_weights

    folder = Path(folder)
    state: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_weights(f))
    return Transformer.from_hf(json.loads((folder / "config.json").read_text()), state, dtype, device, causal)


def save_hf(model: Transformer, folder: str | Path, **config) -> None:
    """Write config.json, generation_config.json and model.safetensors as transformers' save_pretrained
    would, so LlamaForCausalLM.from_pretrained reads them. `config`: extra LlamaConfig fields (eos_token_id=0)."""
    from safetensors.torch import save_file
    from transformers import GenerationConfig, LlamaConfig

    folder = Path(folder)
    hf = LlamaConfig(**model.cfg.to_hf(), architectures=["LlamaForCausalLM"], dtype="float32", **config)
    hf.save_pretrained(folder)
    GenerationConfig.from_model_config(hf).save_pretrained(folder)
    save_file({k: v.float() for k, v in model.to_hf().items()}, str(folder / "model.safetensors"), metadata={"format": "pt"})
