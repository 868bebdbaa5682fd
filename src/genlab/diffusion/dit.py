"""DiT: a diffusion denoiser that is just a transformer (Peebles & Xie 2023, "Scalable Diffusion
Models with Transformers").

The picture is cut into p x p patches, each patch becomes a token, and a stack of
bidirectional transformer blocks (genlab's shared attention and MLP, nn/transformer.py) maps
the tokens of x_t to the tokens of the prediction. The timestep and the class enter through
adaLN-Zero (section 3.2): every block normalises without learned affine parameters, and a
linear layer of the conditioning vector c = embed(t) + embed(class) gives each block a
shift, a scale and a gate for both of its halves. The gates start at zero, so every block
starts as the identity and the network as a whole starts by predicting zero (with text, the
cross-attention below is ungated, as in PixArt-alpha, and does not start at zero).

    x  (B, C, H, W) -> patches (B, N, C p p) -> tokens (B, N, dim) + 2-D position
    c  = timestep_mlp(sinusoid(t)) + class_embedding(label)                       # (B, dim)
    each block:  x = x + gate1 * attn(LN(x) * (1 + scale1) + shift1)
                 x = x + gate2 * mlp(LN(x) * (1 + scale2) + shift2)               # from Linear(c)
    out = Linear(LN(x) * (1 + scale) + shift) -> patches -> (B, C, H, W)

For text-to-image (text2image.py) each block also reads the prompt's token states through
cross-attention after its self-attention, as PixArt-alpha does (Chen et al. 2023), and the
states' mean joins c. `genlab train diffusion --backbone dit` and `genlab train text2image
--backbone dit` train it in place of the UNet; the rest of genlab (samplers, guidance, the
registry) sees the same `model(xt, t, labels)` or `model(zt, t, states)` either way.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.transformer import MLP, Attention, TransformerConfig


def timestep_features(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of a (B,) float timestep, as in the Transformer's positions and DDPM: (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


def position_table(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine positions (as DiT and MAE use): half the channels encode the row,
    half the column. (grid * grid, dim)."""
    quarter = dim // 4
    freqs = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32), indexing="ij")
    parts = [f(axis.flatten()[:, None] * freqs[None]) for axis in (rows, cols) for f in (torch.sin, torch.cos)]
    return torch.cat(parts, dim=-1)  # (N, dim)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: a normalised x (B, N, dim), shifted and scaled per example by (B, dim) vectors."""
    return x * (1 + scale[:, None]) + shift[:, None]


class CrossAttention(nn.Module):
    """Image tokens (queries) read the prompt's token states (keys and values): softmax(q k^T / sqrt(hd)) v."""

    def __init__(self, dim: int, text_width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wkv = nn.Linear(text_width, 2 * dim, bias=False)
        self.wo = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q = self.wq(self.norm(x)).view(B, N, self.heads, -1).transpose(1, 2)  # (B, nh, N, hd)
        k, v = (t.view(B, states.shape[1], self.heads, -1).transpose(1, 2) for t in self.wkv(states).chunk(2, dim=-1))
        y = F.scaled_dot_product_attention(q, k, v)  # (B, nh, N, hd)
        return self.wo(y.transpose(1, 2).reshape(B, N, D))


class DiTBlock(nn.Module):
    def __init__(self, cfg: TransformerConfig, text_width: int = 0):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(cfg)  # bidirectional: cfg.causal is False
        self.cross = CrossAttention(cfg.dim, text_width, cfg.n_heads) if text_width else None
        self.norm2 = nn.LayerNorm(cfg.dim, elementwise_affine=False, eps=1e-6)
        self.mlp = MLP(cfg)
        self.ada = nn.Linear(cfg.dim, 6 * cfg.dim)  # c -> shift, scale, gate for attention and for the MLP

    def forward(self, x, c, cos, sin, states=None):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(F.silu(c)).chunk(6, dim=-1)  # (B, dim) each
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1), cos, sin, None, 0)
        if self.cross is not None:
            x = x + self.cross(x, states)
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class DiT(nn.Module):
    """model(xt, t, labels) -> the prediction, (B, out_channels, H, W). labels (B,) int64; num_classes
    means "no class". With text_width, model(xt, t, states=(B, L, text_width)) reads a prompt instead."""

    def __init__(self, resolution: int, channels: int, num_classes: int = 0, patch: int = 2, dim: int = 128, depth: int = 6,
                 heads: int = 4, text_width: int = 0, out_channels: int | None = None):
        super().__init__()
        grid = resolution // patch
        self.patch, self.channels, self.grid = patch, out_channels or channels, grid
        cfg = TransformerConfig(vocab_size=1, dim=dim, n_layers=depth, n_heads=heads, causal=False, max_seq_len=grid * grid)
        self.embed = nn.Conv2d(channels, dim, patch, stride=patch)  # each p x p patch -> one token
        self.register_buffer("positions", position_table(grid, dim), persistent=False)  # (N, dim)
        self.time_mlp = nn.Sequential(nn.Linear(256, dim), nn.SiLU(), nn.Linear(dim, dim))
        # one extra class, index num_classes, is "no class": what classifier-free guidance needs
        self.label_embed = nn.Embedding(num_classes + 1, dim) if num_classes else None
        self.text_embed = nn.Linear(text_width, dim) if text_width else None  # the prompt's mean state joins c
        self.blocks = nn.ModuleList(DiTBlock(cfg, text_width) for _ in range(depth))
        self.final_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, patch * patch * self.channels)
        # positions are absolute (above), so the shared attention's rotary tables are the identity
        self.register_buffer("rope_cos", torch.ones(grid * grid, cfg.head_dim), persistent=False)
        self.register_buffer("rope_sin", torch.zeros(grid * grid, cfg.head_dim), persistent=False)
        self._init_weights()

    def _init_weights(self):
        """DiT's initialisation: Xavier for the linear layers, N(0, 0.02) for the embeddings, and
        adaLN-Zero: every modulation and the output layer start at zero."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.embed.weight.view(self.embed.weight.shape[0], -1))
        for m in [self.time_mlp[0], self.time_mlp[2]] + [m for m in (self.label_embed, self.text_embed) if m is not None]:
            nn.init.normal_(m.weight, std=0.02)
        for m in [b.ada for b in self.blocks] + [self.final_ada, self.out]:
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, xt: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None,
                states: torch.Tensor | None = None) -> torch.Tensor:
        B, _, H, W = xt.shape
        p, g, C = self.patch, self.grid, self.channels
        x = self.embed(xt).flatten(2).transpose(1, 2) + self.positions.to(xt.dtype)  # (B, N, dim)
        c = self.time_mlp(timestep_features(t, 256).to(xt.dtype))  # (B, dim)
        if self.label_embed is not None and labels is not None:
            c = c + self.label_embed(labels)
        if self.text_embed is not None:
            c = c + self.text_embed(states.mean(dim=1))
        cos, sin = self.rope_cos.to(xt.dtype), self.rope_sin.to(xt.dtype)
        for block in self.blocks:
            x = block(x, c, cos, sin, states)
        shift, scale = self.final_ada(F.silu(c)).chunk(2, dim=-1)
        x = self.out(modulate(self.final_norm(x), shift, scale))  # (B, N, p p C)
        x = x.view(B, g, g, p, p, C).permute(0, 5, 1, 3, 2, 4)  # (B, C, g, p, g, p)
        return x.reshape(B, C, H, W)
