"""A GGUF's weights in the form ONNX Runtime's `MatMulNBits` multiplies by (text/onnx_llama.py builds the graph).

Weights (all in blocks of 32 along the input dimension):
  * GGUF Q4_1 stores w = d*q + m (q in 0..15). MatMulNBits' fast kernels take w = s*(q - z) with
    an integer z in 0..15, so z = round(-m/d) and the rounding, a per-block constant r, is put
    back exactly by a small extra product: y += (sums of x over each block) @ r^T (`Packed.residual`).
  * GGUF Q8_0 stores w = d*q (q in -128..127): the 8-bit form, exactly (zero point 128).
  * Anything else is quantised here: other GGUF types' linears to 4 bits as Q4_1 does it (block
    minimum and step), the head to 8 bits, and layers a LoRA adapter changed (merged in float
    first) to 8 bits.
Every form is checked against gguf's own dequantisation in tests/test_onnx_engine.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genlab.errors import GenlabError

BLOCK = 32

LINEARS = {  # Hugging Face name (model.layers.N.<name>.weight) -> GGUF name (blk.N.<name>.weight)
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


# -- weights in MatMulNBits' form -----------------------------------------------------------------

@dataclass
class Packed:
    """One linear layer (N outputs, nb blocks of 32 inputs) as MatMulNBits inputs."""

    bits: int
    packed: np.ndarray  # uint8 (N, nb, 32*bits/8)
    scale: np.ndarray  # float32 (N, nb)
    zero: np.ndarray | None  # uint8 (N, ceil(nb/2)): two 4-bit zero points a byte; None: the default (8 or 128)
    residual: np.ndarray | None = None  # float32 (N, nb): w - scale*(q - zero), constant over each block


def _f16(raw: np.ndarray) -> np.ndarray:
    return raw.copy().view(np.float16)[..., 0].astype(np.float32)


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """(..., 2n) values in 0..15 -> (..., n) bytes: element 2i in the low nibble, 2i+1 in the high one."""
    if q.shape[-1] % 2:
        q = np.concatenate([q, np.zeros_like(q[..., :1])], axis=-1)
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def q4_1(blocks: np.ndarray) -> Packed:
    """GGUF Q4_1 blocks (N, nb, 20: fp16 d, fp16 m, 16 bytes with element j in the low nibble of byte j
    and element j+16 in its high nibble) -> 4-bit MatMulNBits with the zero point's rounding kept aside."""
    d, m = _f16(blocks[..., 0:2]), _f16(blocks[..., 2:4])
    qs = blocks[..., 4:]
    return _min_step_blocks(np.concatenate([qs & 0xF, qs >> 4], axis=-1), d, m)  # q (N, nb, 32) in element order


def _min_step_blocks(q: np.ndarray, d: np.ndarray, m: np.ndarray) -> Packed:
    """Blocks w = d*q + m (Q4_1's form) as MatMulNBits' w = d*(q - z) with an integer zero point z."""
    z = np.clip(np.round(-m / np.where(d == 0, 1, d)), 0, 15)
    # w = d*q + m = d*(q - z) + (m + d*z): the second term is the residual, the same for the whole block
    return Packed(4, _pack_nibbles(q.astype(np.uint8)), d.astype(np.float32), _pack_nibbles(z.astype(np.uint8)),
                   (m + d * z).astype(np.float32))


def q8_0(blocks: np.ndarray) -> Packed:
    """GGUF Q8_0 blocks (N, nb, 34: fp16 d, then 32 int8) -> 8-bit MatMulNBits (w = d*(u - 128))."""
    q = blocks[..., 2:].view(np.int8).astype(np.int16) + 128
    return Packed(8, q.astype(np.uint8), _f16(blocks[..., 0:2]), None)


def quantize_4bit(w: np.ndarray) -> Packed:
    """Float weights (N, K) -> 4 bits a weight as Q4_1 does it, per block of 32: w ~ d*q + m with m the block's
    minimum and d = (max - min)/15. (Weights dequantised from Q4_1, plus a small LoRA update, land back on
    nearly the same grid.)"""
    n, k = w.shape
    blocks = np.pad(w.astype(np.float32), ((0, 0), (0, -k % BLOCK))).reshape(n, -1, BLOCK)
    lo, hi = blocks.min(-1), blocks.max(-1)
    d = (hi - lo) / 15
    q = np.clip(np.round((blocks - lo[..., None]) / np.where(d == 0, 1, d)[..., None]), 0, 15)
    return _min_step_blocks(q, d, lo)


def quantize_8bit(w: np.ndarray) -> Packed:
    """Float weights (N, K) -> 8 bits a weight, per block of 32: w ~ d*(u - 128), d = max|w|/127."""
    n, k = w.shape
    blocks = np.pad(w.astype(np.float32), ((0, 0), (0, -k % BLOCK))).reshape(n, -1, BLOCK)
    d = np.maximum(np.abs(blocks).max(-1), 1e-30) / 127
    u = np.clip(np.round(blocks / d[..., None]) + 128, 1, 255).astype(np.uint8)
    return Packed(8, u, d.astype(np.float32), None)


def dequantize(p: Packed) -> np.ndarray:
    """What MatMulNBits (plus the residual) multiplies by: (N, nb*32) float32. For tests and checks."""
    n, nb = p.scale.shape
    if p.bits == 4:
        q = np.stack([p.packed & 0xF, p.packed >> 4], axis=-1).reshape(n, nb, BLOCK).astype(np.float32)
        z = np.stack([p.zero & 0xF, p.zero >> 4], axis=-1).reshape(n, -1)[:, :nb].astype(np.float32)
    else:
        q, z = p.packed.astype(np.float32), np.full((n, nb), 128.0, dtype=np.float32)
    w = p.scale[..., None] * (q - z[..., None])
    if p.residual is not None:
        w = w + p.residual[..., None]
    return w.reshape(n, -1)


def interleave_rope_rows(w: np.ndarray, heads: int) -> np.ndarray:
    """Hugging Face orders each head's q/k rows as [first halves; second halves] of the rotated pairs;
    GGUF (and GroupQueryAttention with rotary_interleaved=1) pairs adjacent rows (2i, 2i+1)."""
    n, k = w.shape
    return w.reshape(heads, 2, n // heads // 2, k).swapaxes(1, 2).reshape(n, k)


# -- where the weights come from -----------------------------------------------------------------

class GgufWeights:
    """A Llama GGUF file's tensors; `overrides` (Hugging Face name -> float tensor, HF row order)
    replace layers, e.g. those a LoRA adapter changed."""

    def __init__(self, path: Path, overrides: dict[str, torch.Tensor] | None = None):
        import gguf

        self.reader = gguf.GGUFReader(str(path))
        self.tensors = {t.name: t for t in self.reader.tensors}
        arch = self._field("general.architecture")
        if arch != "llama":
            raise GenlabError(f"the onnx engine runs Llama-architecture models; {path.name} is {arch!r}")
        self.layers, self.width = int(self._field("llama.block_count")), int(self._field("llama.embedding_length"))
        self.heads, self.kv_heads = int(self._field("llama.attention.head_count")), int(self._field("llama.attention.head_count_kv"))
        self.eps = float(self._field("llama.attention.layer_norm_rms_epsilon"))
        self.rope_base = float(self._field("llama.rope.freq_base", 10000.0))
        self.overrides = overrides or {}

    def _field(self, key: str, default=None):
        if key not in self.reader.fields:
            if default is None:
                raise GenlabError(f"the GGUF file has no {key}")
            return default
        f = self.reader.fields[key]
        value = f.parts[f.data[0]]
        return bytes(value).decode() if f.types and f.types[0].name == "STRING" else value[0]

    def _float(self, name: str) -> np.ndarray:
        from gguf.quants import dequantize as gguf_dequantize

        t = self.tensors[name]
        return gguf_dequantize(t.data, t.tensor_type).reshape(t.data.shape[0], -1).astype(np.float32)

    def _blocks(self, name: str) -> np.ndarray:
        t = self.tensors[name]
        return np.ascontiguousarray(t.data).reshape(t.data.shape[0], -1, {"Q4_1": 20, "Q8_0": 34}[t.tensor_type.name])

    def norm(self, name: str) -> np.ndarray:
        return np.asarray(self.tensors[name].data, dtype=np.float32).reshape(-1)

    def linear(self, layer: int, hf: str) -> Packed:
        key = f"model.layers.{layer}.{hf}.weight"
        if key in self.overrides:
            w = self.overrides[key].float().numpy()
            if hf in ("self_attn.q_proj", "self_attn.k_proj"):
                w = interleave_rope_rows(w, self.heads if hf.endswith("q_proj") else self.kv_heads)
            # 8 bits: a fresh 4-bit rounding of the merged weights cost more than the adapter's own change
            # (next-token KL 0.13 against the float model with the adapter, 0.005 at 8 bits; test_onnx_engine.py)
            return quantize_8bit(w)
        name = f"blk.{layer}.{LINEARS[hf]}.weight"
        kind = self.tensors[name].tensor_type.name
        if kind == "Q4_1":
            return q4_1(self._blocks(name))
        if kind == "Q8_0":
            return q8_0(self._blocks(name))
        return quantize_4bit(self._float(name))

    def embedding(self) -> np.ndarray:
        return self._float("token_embd.weight").astype(np.float16)

    def head(self) -> Packed:
        name = "output.weight" if "output.weight" in self.tensors else "token_embd.weight"  # tied
        if "lm_head.weight" in self.overrides:
            return quantize_8bit(self.overrides["lm_head.weight"].float().numpy())
        if self.tensors[name].tensor_type.name == "Q8_0":
            return q8_0(self._blocks(name))
        return quantize_8bit(self._float(name))
