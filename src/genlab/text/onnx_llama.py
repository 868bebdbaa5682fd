"""A 4-bit Llama on ONNX Runtime: the CPU text engine for GGUF models.

Why: decoding one token reads every weight once, so on a CPU its speed is memory bandwidth
divided by the bytes of weights (docs/text-engines.md). SmolLM2-135M in fp16 is 269 MB a
token; its Q4_1 GGUF is about 110 MB. ONNX Runtime's `MatMulNBits` multiplies by 4-bit blocks
directly: with `accuracy_level=4` it quantises the activations to int8 per block and uses
integer dot products, as llama.cpp does. genlab then reads what llama.cpp reads.

The graph is a plain Llama, written here node by node:

    ids -> embedding -> L x [ RMSNorm -> q|k|v (one 4-bit matmul) -> GroupQueryAttention
                              (RoPE + KV cache + causal softmax, one fused op) -> o
                              -> RMSNorm -> gate|up (one 4-bit matmul) -> SiLU(gate) * up -> down ]
        -> last positions -> RMSNorm -> head -> logits

Weights (all in blocks of 32 along the input dimension):
  * GGUF Q4_1 stores w = d*q + m (q in 0..15). MatMulNBits' fast kernels take w = s*(q - z) with
    an integer z in 0..15, so z = round(-m/d) and the rounding, a per-block constant r, is put
    back exactly by a small extra product: y += (sums of x over each block) @ r^T (`_Packed.residual`).
  * GGUF Q8_0 stores w = d*q (q in -128..127): the 8-bit form, exactly (zero point 128).
  * Anything else is quantised here: other GGUF types' linears to 4 bits as Q4_1 does it (block
    minimum and step), the head to 8 bits, and layers a LoRA adapter changed (merged in float
    first) to 8 bits.
genlab's decoding loop (autoregressive/decode.py) is unchanged: sampling, stop strings,
logprobs and seeds work as with every engine; this class only turns ids into logits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genlab.errors import GenlabError

BLOCK = 32
ACCURACY = 4  # MatMulNBits: int8 activations, integer dot products
FORMAT = 3  # bump when the graph changes: a cached .onnx of another format is rebuilt
MAX_POSITIONS = 8192  # the RoPE tables' length; a cache is allocated per request at its own length

LINEARS = {  # Hugging Face name (model.layers.N.<name>.weight) -> GGUF name (blk.N.<name>.weight)
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


# -- weights in MatMulNBits' form -----------------------------------------------------------------

@dataclass
class _Packed:
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


def q4_1(blocks: np.ndarray) -> _Packed:
    """GGUF Q4_1 blocks (N, nb, 20: fp16 d, fp16 m, 16 bytes with element j in the low nibble of byte j
    and element j+16 in its high nibble) -> 4-bit MatMulNBits with the zero point's rounding kept aside."""
    d, m = _f16(blocks[..., 0:2]), _f16(blocks[..., 2:4])
    qs = blocks[..., 4:]
    return _min_step_blocks(np.concatenate([qs & 0xF, qs >> 4], axis=-1), d, m)  # q (N, nb, 32) in element order


def _min_step_blocks(q: np.ndarray, d: np.ndarray, m: np.ndarray) -> _Packed:
    """Blocks w = d*q + m (Q4_1's form) as MatMulNBits' w = d*(q - z) with an integer zero point z."""
    z = np.clip(np.round(-m / np.where(d == 0, 1, d)), 0, 15)
    # w = d*q + m = d*(q - z) + (m + d*z): the second term is the residual, the same for the whole block
    return _Packed(4, _pack_nibbles(q.astype(np.uint8)), d.astype(np.float32), _pack_nibbles(z.astype(np.uint8)),
                   (m + d * z).astype(np.float32))


def q8_0(blocks: np.ndarray) -> _Packed:
    """GGUF Q8_0 blocks (N, nb, 34: fp16 d, then 32 int8) -> 8-bit MatMulNBits (w = d*(u - 128))."""
    q = blocks[..., 2:].view(np.int8).astype(np.int16) + 128
    return _Packed(8, q.astype(np.uint8), _f16(blocks[..., 0:2]), None)


def quantize_4bit(w: np.ndarray) -> _Packed:
    """Float weights (N, K) -> 4 bits a weight as Q4_1 does it, per block of 32: w ~ d*q + m with m the block's
    minimum and d = (max - min)/15. (Weights dequantised from Q4_1, plus a small LoRA update, land back on
    nearly the same grid.)"""
    n, k = w.shape
    blocks = np.pad(w.astype(np.float32), ((0, 0), (0, -k % BLOCK))).reshape(n, -1, BLOCK)
    lo, hi = blocks.min(-1), blocks.max(-1)
    d = (hi - lo) / 15
    q = np.clip(np.round((blocks - lo[..., None]) / np.where(d == 0, 1, d)[..., None]), 0, 15)
    return _min_step_blocks(q, d, lo)


def quantize_8bit(w: np.ndarray) -> _Packed:
    """Float weights (N, K) -> 8 bits a weight, per block of 32: w ~ d*(u - 128), d = max|w|/127."""
    n, k = w.shape
    blocks = np.pad(w.astype(np.float32), ((0, 0), (0, -k % BLOCK))).reshape(n, -1, BLOCK)
    d = np.maximum(np.abs(blocks).max(-1), 1e-30) / 127
    u = np.clip(np.round(blocks / d[..., None]) + 128, 1, 255).astype(np.uint8)
    return _Packed(8, u, d.astype(np.float32), None)


def dequantize(p: _Packed) -> np.ndarray:
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

    def linear(self, layer: int, hf: str) -> _Packed:
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

    def head(self) -> _Packed:
        name = "output.weight" if "output.weight" in self.tensors else "token_embd.weight"  # tied
        if "lm_head.weight" in self.overrides:
            return quantize_8bit(self.overrides["lm_head.weight"].float().numpy())
        if self.tensors[name].tensor_type.name == "Q8_0":
            return q8_0(self._blocks(name))
        return quantize_8bit(self._float(name))


# -- the graph ------------------------------------------------------------------------------------

class _Graph:
    """Collects nodes and initializers; each helper returns its output names."""

    def __init__(self):
        self.nodes, self.inits, self.count = [], [], 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, hint: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array) if array.ndim else array, name))
        return name

    def op(self, op: str, inputs: list[str], hint: str, outputs: int = 1, domain: str = "", **attrs) -> list[str]:
        from onnx import helper

        names = [self.name(f"{hint}_{i}") for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, names, name=self.name(op), domain=domain, **attrs))
        return names

    def matmul(self, x: str, parts: list[_Packed], hint: str) -> str:
        """x @ W^T for the layers' rows stacked (q|k|v, gate|up): one MatMulNBits (+ its residual)."""
        if len({p.bits for p in parts}) > 1 or len({p.residual is None for p in parts}) > 1:  # mixed sources:
            again = quantize_8bit if max(p.bits for p in parts) == 8 else quantize_4bit  # one form, the finer
            parts = [again(dequantize(p)) for p in parts]
        p = parts[0]
        packed, scale = np.concatenate([q.packed for q in parts]), np.concatenate([q.scale for q in parts])
        n, nb = scale.shape
        inputs = [x, self.const(hint + "_q", packed), self.const(hint + "_s", scale.reshape(-1))]
        if p.zero is not None:
            inputs.append(self.const(hint + "_z", np.concatenate([q.zero for q in parts]).reshape(-1)))
        y = self.op("MatMulNBits", inputs, hint, domain="com.microsoft", K=nb * BLOCK, N=n, bits=p.bits,
                    block_size=BLOCK, accuracy_level=ACCURACY)[0]
        if p.residual is None:
            return y
        # the residual, constant over each block: y += (x summed over each block) @ residual^T
        blocks = self.op("Reshape", [x, self.const("shape", np.array([0, 0, nb, BLOCK], dtype=np.int64))], "xb")[0]
        sums = self.op("ReduceSum", [blocks, self.const("axes", np.array([-1], dtype=np.int64))], "xs", keepdims=0)[0]
        residual = np.concatenate([q.residual for q in parts]).T.copy()
        return self.op("Add", [y, self.op("MatMul", [sums, self.const(hint + "_r", residual)], "r")[0]], hint)[0]


def build(weights: GgufWeights) -> bytes:
    """The ONNX model (serialised) of a Llama whose weights `weights` gives."""
    from onnx import TensorProto, helper

    w, g = weights, _Graph()
    head_dim = w.width // w.heads
    # RoPE tables: angle[p, i] = p * base^(-2i/d), for GroupQueryAttention with adjacent pairs
    inv_freq = w.rope_base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angles = np.outer(np.arange(MAX_POSITIONS, dtype=np.float64), inv_freq)
    cos, sin = g.const("cos", np.cos(angles).astype(np.float32)), g.const("sin", np.sin(angles).astype(np.float32))

    table = w.embedding()
    vocab = table.shape[0]
    residual = g.op("Cast", [g.op("Gather", [g.const("embed", table), "input_ids"], "embed")[0]], "x", to=TensorProto.FLOAT)[0]
    zero, minus_one = g.const("zero", np.array([0], dtype=np.int64)), g.const("minus_one", np.array([-1], dtype=np.int64))
    big, axis1 = g.const("end", np.array([2**62], dtype=np.int64)), g.const("axis", np.array([1], dtype=np.int64))
    delta, past = None, []
    for i in range(w.layers):
        past += [f"past_key_{i}", f"past_value_{i}"]
        gamma = g.const("norm", w.norm(f"blk.{i}.attn_norm.weight"))
        if delta is None:
            h = g.op("SimplifiedLayerNormalization", [residual, gamma], "h", epsilon=w.eps, axis=-1, stash_type=1)[0]
        else:  # residual += delta, then normalise: one fused op
            h, _, _, residual = g.op("SkipSimplifiedLayerNormalization", [delta, residual, gamma], "h", outputs=4,
                                     domain="com.microsoft", epsilon=w.eps)
        qkv = g.matmul(h, [w.linear(i, n) for n in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")], "qkv")
        # GroupQueryAttention takes another path for a single new row, whose rounding differs in the 7th
        # digit; int8 activations magnify that to whole tokens. One spare row (a copy of the last) keeps
        # every pass on the many-row path, so a token's logits do not depend on how many rows share its
        # pass, and speculative decoding (one pass, several rows) writes what one-row passes write.
        spare = g.op("Slice", [qkv, minus_one, big, axis1], "spare")[0]
        padded = g.op("Concat", [qkv, spare], "padded", axis=1)[0]
        attn = g.op("GroupQueryAttention", [padded, "", "", f"past_key_{i}", f"past_value_{i}", "seqlens_k",
                                            "total_sequence_length", cos, sin],
                    "attn", outputs=3, domain="com.microsoft", num_heads=w.heads, kv_num_heads=w.kv_heads,
                    do_rotary=1, rotary_interleaved=1)[0]
        g.nodes[-1].output[1:] = [f"present_key_{i}", f"present_value_{i}"]  # the same buffers as past: in place
        attn = g.op("Slice", [attn, zero, minus_one, axis1], "attn")[0]  # the spare row's answer is dropped
        o = g.matmul(attn, [w.linear(i, "self_attn.o_proj")], "o")
        gamma = g.const("norm", w.norm(f"blk.{i}.ffn_norm.weight"))
        h, _, _, residual = g.op("SkipSimplifiedLayerNormalization", [o, residual, gamma], "h", outputs=4,
                                 domain="com.microsoft", epsilon=w.eps)
        gate, up = g.op("Split", [g.matmul(h, [w.linear(i, "mlp.gate_proj"), w.linear(i, "mlp.up_proj")], "gate_up")],
                        "split", outputs=2, axis=-1, num_outputs=2)
        act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate], "sig")[0]], "silu")[0], up], "act")[0]
        delta = g.matmul(act, [w.linear(i, "mlp.down_proj")], "down")
    x = g.op("Add", [delta, residual], "x")[0]
    # logits only for the last `logits_count` positions: the head is the largest matmul, and a prompt
    # of 400 tokens needs one row of it (a draft to verify needs a few)
    start = g.op("Neg", ["logits_count"], "start")[0]
    last = g.op("Slice", [x, start, big, axis1], "last")[0]
    h = g.op("SimplifiedLayerNormalization", [last, g.const("norm", w.norm("output_norm.weight"))], "h",
             epsilon=w.eps, axis=-1, stash_type=1)[0]
    g.matmul(h, [w.head()], "head")
    g.nodes[-1].output[0] = "logits"

    cache = [1, w.kv_heads, "max_length", head_dim]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "sequence"]),
              helper.make_tensor_value_info("logits_count", TensorProto.INT64, [1]),
              helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [1]),
              helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, [])]
    inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, cache) for n in past]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "count", vocab])]
    outputs += [helper.make_tensor_value_info(n.replace("past", "present"), TensorProto.FLOAT, cache) for n in past]
    graph = helper.make_graph(g.nodes, "genlab-llama-4bit", inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    return model.SerializeToString()


def cached_build(gguf: Path, folder: Path) -> bytes:
    """build(GgufWeights(gguf)), kept in the GGUF's converted folder (written atomically) for the next load."""
    from genlab.progress import stage_progress
    from genlab.store import atomic_write_bytes

    path = folder / f"genlab-4bit-v{FORMAT}.onnx"
    if path.is_file():
        return path.read_bytes()
    with stage_progress(f"First use of the onnx engine: building its 4-bit graph of {gguf.name} once (about 6 s here)", 1) as advance:
        advance("reading and repacking the weights")
        data = build(GgufWeights(gguf))
    try:
        atomic_write_bytes(path, data)
    except OSError:
        pass  # a read-only cache: build again next time
    return data


def time_matmul(n: int, k: int) -> float:
    """Seconds for one decode-shaped (1 x k) @ (k x n) 4-bit MatMulNBits product here: the quickest of five rounds."""
    import time

    import onnxruntime as ort
    from onnx import TensorProto, helper

    g = _Graph()
    g.matmul("x", [quantize_4bit(np.random.default_rng(0).standard_normal((n, k)).astype(np.float32))], "y")
    g.nodes[-1].output[0] = "y"
    graph = helper.make_graph(g.nodes, "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, n])], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    options = ort.SessionOptions()
    options.intra_op_num_threads = len(os.sched_getaffinity(0))
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = {"x": np.random.default_rng(1).standard_normal((1, 1, k)).astype(np.float32)}
    session.run(None, feed)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(8):
            session.run(None, feed)
        best = min(best, (time.perf_counter() - t) / 8)
    return best


# -- the engine -----------------------------------------------------------------------------------

class OnnxCache:
    """Per-layer K and V buffers of `max_len` positions that GroupQueryAttention fills in place."""

    def __init__(self, names: list[str], shape: list[int]):
        import onnxruntime as ort

        self.values = {n: ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, dtype=np.float32)) for n in names}
        self.length, self.capacity = 0, shape[2]


class OnnxLlama:
    """The LanguageModel protocol (autoregressive/decode.py) over an ONNX Runtime session."""

    engine = "onnx"

    def __init__(self, model_bytes: bytes, tokenizer, stop_token_ids: set[int], context_length: int, num_parameters: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = len(os.sched_getaffinity(0))
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        self.tokenizer, self.stop_token_ids = tokenizer, stop_token_ids
        self.context_length = min(context_length, MAX_POSITIONS)
        self.num_parameters = num_parameters
        self.device, self.dtype = torch.device("cpu"), "4-bit"
        past = [i for i in self.session.get_inputs() if i.name.startswith("past_")]
        self.past_names, self.cache_shape = [i.name for i in past], list(past[0].shape)

    def new_cache(self, max_len: int) -> OnnxCache:
        """Room for max_len positions, plus the spare row's (see build())."""
        length = min(max_len, self.context_length) + 1
        return OnnxCache(self.past_names, self.cache_shape[:2] + [length] + self.cache_shape[3:])

    def forward(self, ids: list[int], cache: OnnxCache) -> torch.Tensor:
        return self.forward_all(ids, cache, 1)[0]

    def rewind(self, cache: OnnxCache, length: int) -> None:
        """Keep the first `length` positions (speculative.py, after a rejected guess); the next forward overwrites the rest."""
        cache.length = min(cache.length, length)

    def forward_all(self, ids: list[int], cache: OnnxCache, count: int) -> torch.Tensor:
        """Append ids to the cache; the logits (count, V) float32 for the positions after the last `count` ids."""
        total = cache.length + len(ids)
        if total + 1 > cache.capacity:
            raise GenlabError(f"the prompt and the reply need {total} positions; this cache holds {cache.capacity - 1}")
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", np.asarray([ids], dtype=np.int64))
        binding.bind_cpu_input("logits_count", np.asarray([count], dtype=np.int64))
        # positions the attention sees, the spare row's included (it writes the slot after the last and
        # the next pass overwrites it): GroupQueryAttention's seqlens_k is that count less one
        binding.bind_cpu_input("seqlens_k", np.asarray([total], dtype=np.int32))
        binding.bind_cpu_input("total_sequence_length", np.asarray(total + 1, dtype=np.int32))
        binding.bind_output("logits")  # first: get_outputs() lists them in the order bound
        for name, value in cache.values.items():
            binding.bind_ortvalue_input(name, value)
            binding.bind_ortvalue_output(name.replace("past", "present"), value)  # updated in place
        self.session.run_with_iobinding(binding)
        cache.length = total
        return torch.from_numpy(binding.get_outputs()[0].numpy()[0].copy())
