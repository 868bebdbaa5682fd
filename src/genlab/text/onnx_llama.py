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

The weights are the GGUF's own 4- and 8-bit blocks, repacked exactly (gguf_blocks.py). A graph
for several sequences a pass (`slots`, batched serving: text/batching.py) runs every slot's rows
through the matmuls together and each slot's through its own attention and cache.
genlab's decoding loop (autoregressive/decode.py) is unchanged: sampling, stop strings,
logprobs and seeds work as with every engine; this class only turns ids into logits.
"""

from __future__ import annotations

import os
import threading
import weakref
from pathlib import Path

import numpy as np
import torch

from genlab.errors import GenlabError
from genlab.text.gguf_blocks import BLOCK, GgufWeights, Packed, dequantize, quantize_4bit, quantize_8bit

ACCURACY = 4  # MatMulNBits: int8 activations, integer dot products
FORMAT = 4  # bump when the graph changes: a cached .onnx of another format is rebuilt
MAX_POSITIONS = 8192  # the RoPE tables' length; a cache is allocated per request at its own length


def available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


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

    def matmul(self, x: str, parts: list[Packed], hint: str) -> str:
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


def build(weights: GgufWeights, slots: int = 1) -> bytes:
    """The ONNX model (serialised) of a Llama whose weights `weights` gives, for `slots` sequences a pass.

    Every sequence keeps its own KV cache. Their new rows go through the matmuls together, stacked
    along one axis (the weights are read once for all of them: batched serving), and each slot's rows
    through its own attention over its own cache, exactly as when it runs alone."""
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
    delta, past = None, []
    for i in range(w.layers):
        past += [name for b in range(slots) for name in (f"past_key_{i}_{b}", f"past_value_{i}_{b}")]
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
        # `padded_rows` lists each slot's rows and then its last row again; `kept_rows` drops the spares.
        padded = g.op("Gather", [qkv, "padded_rows"], "padded", axis=1)[0]
        parts = g.op("Split", [padded, "padded_counts"], "slot", outputs=slots, axis=1) if slots > 1 else [padded]
        answers = []
        for b, rows in enumerate(parts):  # each slot's rows attend over its own cache, as when alone
            answers.append(g.op("GroupQueryAttention", [rows, "", "", f"past_key_{i}_{b}", f"past_value_{i}_{b}",
                                                        f"seqlens_k_{b}", f"total_sequence_length_{b}", cos, sin],
                                "attn", outputs=3, domain="com.microsoft", num_heads=w.heads, kv_num_heads=w.kv_heads,
                                do_rotary=1, rotary_interleaved=1)[0])
            g.nodes[-1].output[1:] = [f"present_key_{i}_{b}", f"present_value_{i}_{b}"]  # the past's buffers: in place
        attn = answers[0] if slots == 1 else g.op("Concat", answers, "attn", axis=1)[0]
        attn = g.op("Gather", [attn, "kept_rows"], "attn", axis=1)[0]
        o = g.matmul(attn, [w.linear(i, "self_attn.o_proj")], "o")
        gamma = g.const("norm", w.norm(f"blk.{i}.ffn_norm.weight"))
        h, _, _, residual = g.op("SkipSimplifiedLayerNormalization", [o, residual, gamma], "h", outputs=4,
                                 domain="com.microsoft", epsilon=w.eps)
        gate, up = g.op("Split", [g.matmul(h, [w.linear(i, "mlp.gate_proj"), w.linear(i, "mlp.up_proj")], "gate_up")],
                        "split", outputs=2, axis=-1, num_outputs=2)
        act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate], "sig")[0]], "silu")[0], up], "act")[0]
        delta = g.matmul(act, [w.linear(i, "mlp.down_proj")], "down")
    x = g.op("Add", [delta, residual], "x")[0]
    # logits only for the rows asked for: the head is the largest matmul, and a prompt of 400 tokens
    # needs one row of it (a draft to verify needs a few)
    last = g.op("Gather", [x, "logit_rows"], "last", axis=1)[0]
    h = g.op("SimplifiedLayerNormalization", [last, g.const("norm", w.norm("output_norm.weight"))], "h",
             epsilon=w.eps, axis=-1, stash_type=1)[0]
    g.matmul(h, [w.head()], "head")
    g.nodes[-1].output[0] = "logits"

    cache = [1, w.kv_heads, "max_length", head_dim]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "rows"]),
              helper.make_tensor_value_info("logit_rows", TensorProto.INT64, ["count"]),
              helper.make_tensor_value_info("padded_rows", TensorProto.INT64, ["padded"]),
              helper.make_tensor_value_info("kept_rows", TensorProto.INT64, ["rows"])]
    if slots > 1:
        inputs.append(helper.make_tensor_value_info("padded_counts", TensorProto.INT64, [slots]))
    for b in range(slots):
        inputs += [helper.make_tensor_value_info(f"seqlens_k_{b}", TensorProto.INT32, [1]),
                   helper.make_tensor_value_info(f"total_sequence_length_{b}", TensorProto.INT32, [])]
    inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, cache) for n in past]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "count", vocab])]
    outputs += [helper.make_tensor_value_info(n.replace("past", "present"), TensorProto.FLOAT, cache) for n in past]
    graph = helper.make_graph(g.nodes, "genlab-llama-4bit", inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    return model.SerializeToString()


def cached_build(gguf: Path, folder: Path, slots: int = 1) -> bytes:
    """build(GgufWeights(gguf), slots), kept in the GGUF's converted folder (written atomically) for the next load."""
    from genlab.progress import stage_progress
    from genlab.store import atomic_write_bytes

    path = folder / (f"genlab-4bit-v{FORMAT}.onnx" if slots == 1 else f"genlab-4bit-v{FORMAT}-batch{slots}.onnx")
    if path.is_file():
        return path.read_bytes()
    what = "its 4-bit graph" if slots == 1 else f"its graph for batches of {slots}"
    with stage_progress(f"First use of the onnx engine: building {what} of {gguf.name} once (about 6 s here)", 1) as advance:
        advance("reading and repacking the weights")
        data = build(GgufWeights(gguf), slots)
    try:
        atomic_write_bytes(path, data)
        for stale in folder.glob("genlab-4bit-v*.onnx"):  # graphs of an older FORMAT: 172 MB each, never read again
            if not stale.name.startswith(f"genlab-4bit-v{FORMAT}.") and not stale.name.startswith(f"genlab-4bit-v{FORMAT}-"):
                stale.unlink(missing_ok=True)
    except OSError:
        pass  # a read-only cache: build again next time
    return data


def session(model_bytes: bytes):
    """An ONNX Runtime CPU session on every core this process may use, ops one after another."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = len(os.sched_getaffinity(0))
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    # the threads stop spinning when a pass ends, and leave the cores to the sampling between passes
    options.add_session_config_entry("session.force_spinning_stop", "1")
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def matmul_probe(n: int, k: int):
    """A call that runs one decode-shaped (1 x k) @ (k x n) 4-bit MatMulNBits product, for timing (engine.py)."""
    from onnx import TensorProto, helper

    g = _Graph()
    g.matmul("x", [quantize_4bit(np.random.default_rng(0).standard_normal((n, k)).astype(np.float32))], "y")
    g.nodes[-1].output[0] = "y"
    graph = helper.make_graph(g.nodes, "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, n])], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    probe = session(model.SerializeToString())
    feed = {"x": np.random.default_rng(1).standard_normal((1, 1, k)).astype(np.float32)}
    return lambda: probe.run(None, feed)


# -- the engine -----------------------------------------------------------------------------------

class OnnxCache:
    """One sequence's K and V buffers, one pair a layer, of `capacity` positions that GroupQueryAttention fills in place."""

    def __init__(self, layers: int, shape: list[int], scratch: bool = False):
        import onnxruntime as ort

        def buffer():
            return ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, dtype=np.float32))

        self.keys, self.values = [buffer() for _ in range(layers)], [buffer() for _ in range(layers)]
        self.length, self.capacity = 0, shape[2]
        self.scratch = scratch  # a buffer for an unfilled batch slot (OnnxLlama.forward_batch)


class OnnxLlama:
    """The LanguageModel protocol (autoregressive/decode.py) over an ONNX Runtime session.

    `graph(slots)` gives the serialised model for passes of `slots` sequences (build()); the one-slot
    graph is built at once, a batched one when forward_batch first needs it (text/batching.py)."""

    engine = "onnx"

    def __init__(self, graph, tokenizer, stop_token_ids: set[int], context_length: int, num_parameters: int):
        self.graph, self.sessions, self._scratches, self._lock = graph, {}, {}, threading.Lock()
        first = self.session_for(1)[0]
        self.tokenizer, self.stop_token_ids = tokenizer, stop_token_ids
        self.context_length = min(context_length, MAX_POSITIONS)
        self.num_parameters = num_parameters
        self.device, self.dtype = torch.device("cpu"), "4-bit"
        past = [i for i in first.get_inputs() if i.name.startswith("past_key_")]
        self.layers, self.cache_shape = len(past), list(past[0].shape)
        self.vocab = first.get_outputs()[0].shape[-1]

    def new_cache(self, max_len: int) -> OnnxCache:
        """Room for max_len positions, plus the spare row's (see build())."""
        return self._cache(min(max_len, self.context_length) + 1)

    def _cache(self, positions: int, scratch: bool = False) -> OnnxCache:
        return OnnxCache(self.layers, self.cache_shape[:2] + [positions] + self.cache_shape[3:], scratch)

    def forward(self, ids: list[int], cache: OnnxCache) -> torch.Tensor:
        return self.forward_all(ids, cache, 1)[0]

    def rewind(self, cache: OnnxCache, length: int) -> None:
        """Keep the first `length` positions (speculative.py, after a rejected guess); the next forward overwrites the rest."""
        cache.length = min(cache.length, length)

    def forward_all(self, ids: list[int], cache: OnnxCache, count: int) -> torch.Tensor:
        """Append ids to the cache; the logits (count, V) float32 for the positions after the last `count` ids."""
        return self.forward_batch([(ids, cache, count)])[0]

    def forward_batch(self, calls: list[tuple[list[int], OnnxCache, int]], slots: int | None = None) -> list[torch.Tensor]:
        """forward_all for several sequences in one pass: each call's logits are those it gets alone.
        `slots`: the graph to run (at least len(calls)); a slot no call fills adds no rows to the matmuls."""
        slots = slots or len(calls)
        with self._lock:  # one binding per session, kept from pass to pass
            run, binding, seated = self.session_for(slots)
            seats = _seat([cache for _, cache, _ in calls], seated)
            rows, logit_rows, padded, counts, kept, where = [], [], [], [], [], {}
            for b, j in enumerate(seats):
                if j is None:  # an unfilled slot attends with a copy of row 0 over a scratch cache
                    cache, ids, count, padded_b, total = self._scratch(b), [], 0, [0, 0], 1
                else:
                    ids, cache, count = calls[j]
                    total = cache.length + len(ids)
                    if total + 1 > cache.capacity:
                        raise GenlabError(f"the prompt and the reply need {total} positions; this cache holds {cache.capacity - 1}")
                    first = len(rows)
                    rows += ids
                    where[j] = len(logit_rows)
                    logit_rows += range(len(rows) - count, len(rows))
                    kept += range(len(padded), len(padded) + len(ids))
                    padded_b = [*range(first, len(rows)), len(rows) - 1]  # the slot's rows, then its spare
                padded += padded_b
                counts.append(len(padded_b))
                # positions slot b's attention sees, the spare row's included (it writes the position after
                # the last; the next pass overwrites it): GroupQueryAttention's seqlens_k is that count less one
                binding.bind_cpu_input(f"seqlens_k_{b}", np.asarray([total], dtype=np.int32))
                binding.bind_cpu_input(f"total_sequence_length_{b}", np.asarray(total + 1, dtype=np.int32))
                if seated[b] is None or seated[b]() is not cache:  # a new occupant: bind its buffers
                    for i in range(self.layers):
                        for kind, value in (("key", cache.keys[i]), ("value", cache.values[i])):
                            binding.bind_ortvalue_input(f"past_{kind}_{i}_{b}", value)
                            binding.bind_ortvalue_output(f"present_{kind}_{i}_{b}", value)  # updated in place
                    seated[b] = weakref.ref(cache)
            for name, value in (("input_ids", [rows]), ("logit_rows", logit_rows), ("padded_rows", padded), ("kept_rows", kept)):
                binding.bind_cpu_input(name, np.asarray(value, dtype=np.int64))
            if slots > 1:
                binding.bind_cpu_input("padded_counts", np.asarray(counts, dtype=np.int64))
            logits = np.empty((1, len(logit_rows), self.vocab), dtype=np.float32)
            binding.bind_output("logits", "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data)
            run.run_with_iobinding(binding)
        out = []
        for j, (ids, cache, count) in enumerate(calls):
            cache.length += len(ids)
            out.append(torch.from_numpy(logits[0, where[j]:where[j] + count]))
        return out

    def session_for(self, slots: int):
        """(session, its IOBinding, the cache bound to each slot) for passes of `slots` sequences; the
        session is made, and its graph built, on first use."""
        if slots not in self.sessions:
            run = session(self.graph(slots))
            self.sessions[slots] = (run, run.io_binding(), [None] * slots)
        return self.sessions[slots]

    def _scratch(self, b: int) -> OnnxCache:
        """Two positions for unfilled slot b to write; nothing reads them."""
        if b not in self._scratches:
            self._scratches[b] = self._cache(2, scratch=True)
        return self._scratches[b]


def _seat(caches: list[OnnxCache], seated: list) -> list[int | None]:
    """Which call sits in each slot: a cache keeps the slot it had last pass (its buffers stay bound),
    a new one takes a slot that is empty or whose cache has gone, before one whose cache sat out a pass."""
    were = {id(c): b for b, ref in enumerate(seated) if ref is not None and (c := ref()) is not None}
    seats: list[int | None] = [None] * len(seated)
    newcomers = []
    for j, cache in enumerate(caches):
        b = were.get(id(cache))
        if b is None:
            newcomers.append(j)
        else:
            seats[b] = j

    def taken(b: int) -> bool:  # by a live generation's cache
        c = seated[b]() if seated[b] is not None else None
        return c is not None and not c.scratch

    free = sorted((b for b in range(len(seated)) if seats[b] is None), key=taken)
    for j, b in zip(newcomers, free):
        seats[b] = j
    return seats
