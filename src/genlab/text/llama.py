"""A Llama-family decoder with an explicit KV cache, written to be read.

SmolLM2, Llama 2/3 (default RoPE), Mistral without sliding windows and TinyLlama
all share this shape: token embedding -> N x [RMSNorm -> attention (RoPE, grouped
query heads) -> residual -> RMSNorm -> SwiGLU MLP -> residual] -> RMSNorm -> logits.

Why not just call transformers' LlamaForCausalLM? For one token at a time on a CPU
its per-step bookkeeping (dynamic cache objects, mask building, generic hooks) costs
as much as the arithmetic. Here the cache is two preallocated tensors, the q/k/v and
gate/up projections are fused into one matmul each, and the weights can be kept in
half precision. tests/test_llama.py proves the logits match transformers.

    model = Llama.from_hf(config_dict, state_dict)
    cache = model.new_cache(max_len=256)
    logits = model(torch.tensor([[1, 2, 3]]), cache)   # (1, 3, vocab)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class UnsupportedArchitecture(ValueError):
    """The config describes a model this module does not implement (the caller falls back)."""


@dataclass
class LlamaConfig:
    vocab_size: int
    dim: int  # width of the residual stream
    n_layers: int
    n_heads: int  # query heads
    n_kv_heads: int  # key/value heads; n_heads // n_kv_heads queries share each (GQA)
    head_dim: int
    hidden_dim: int  # width of the SwiGLU MLP
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 2048
    tie_embeddings: bool = False

    @classmethod
    def from_hf(cls, cfg: dict) -> "LlamaConfig":
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
        )


class KVCache:
    """Keys and values of every position seen so far, one preallocated slab per layer.

    Decoding token t only needs q for t, but k and v for 0..t: keeping them here turns
    each step from O(t) recomputation into one row of new work.
    """

    def __init__(self, cfg: LlamaConfig, batch: int, max_len: int, dtype, device):
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


def rope_tables(cfg: LlamaConfig, device) -> tuple[torch.Tensor, torch.Tensor]:
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
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        # q, k and v projections fused into one matmul: one weight read instead of three
        self.wqkv = nn.Linear(cfg.dim, (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(self, x, cos, sin, cache: KVCache, layer: int):
        B, T, _ = x.shape
        nh, nkv, hd = self.n_heads, self.n_kv_heads, self.head_dim
        q, k, v = self.wqkv(x).split([nh * hd, nkv * hd, nkv * hd], dim=-1)
        q = q.view(B, T, nh, hd).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(B, T, nkv, hd).transpose(1, 2)  # (B, nkv, T, hd)
        v = v.view(B, T, nkv, hd).transpose(1, 2)  # (B, nkv, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)

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
            # Same math for a whole prompt, with a causal mask, through the fused kernel that
            # never materialises the (T, S) score matrix. A chunk appended to an existing cache
            # (start > 0) needs an explicit mask: query i sees keys 0..start+i.
            mask = None if start == 0 else torch.ones(T, end, dtype=torch.bool, device=x.device).tril(diagonal=start)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=start == 0, enable_gqa=nh != nkv)
        y = y.transpose(1, 2).reshape(B, T, nh * hd)  # (B, T, nh*hd)
        return self.wo(y)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), with gate and up fused into one matmul."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.w_gate_up = nn.Linear(cfg.dim, 2 * cfg.hidden_dim, bias=False)
        self.w_down = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)

    def forward(self, x):
        gate, up = self.w_gate_up(x).chunk(2, dim=-1)
        return self.w_down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, cache, layer):
        x = x + self.attn(self.attn_norm(x), cos, sin, cache, layer)
        return x + self.mlp(self.mlp_norm(x))


class Llama(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        cos, sin = rope_tables(cfg, "cpu")
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def new_cache(self, max_len: int, batch: int = 1) -> KVCache:
        max_len = min(max_len, self.cfg.max_seq_len)
        return KVCache(self.cfg, batch, max_len, self.lm_head.weight.dtype, self.lm_head.weight.device)

    @torch.inference_mode()
    def forward(self, idx: torch.Tensor, cache: KVCache, last_only: bool = False) -> torch.Tensor:
        """idx (B, T) token ids appended after cache.pos -> logits (B, T, vocab), float32."""
        B, T = idx.shape
        if cache.pos + T > cache.max_len:
            raise ValueError(f"context full: {cache.pos} + {T} tokens > {cache.max_len}")
        x = self.embed(idx)  # (B, T, dim)
        dtype = x.dtype
        cos = self.rope_cos[cache.pos : cache.pos + T].to(dtype)  # (T, hd)
        sin = self.rope_sin[cache.pos : cache.pos + T].to(dtype)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, cache, i)
        cache.pos += T
        if last_only:
            x = x[:, -1:]  # prefill only needs the next-token distribution
        return self.lm_head(self.norm(x)).float()

    @classmethod
    def from_hf(cls, config: dict, state: dict[str, torch.Tensor], dtype=torch.float32, device="cpu") -> "Llama":
        """Build from a transformers config dict and its state dict (names as in LlamaForCausalLM)."""
        cfg = LlamaConfig.from_hf(config)
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

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied weights are counted once

