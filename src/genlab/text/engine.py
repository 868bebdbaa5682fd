"""Engines: objects that turn token ids into next-token logits (the LanguageModel protocol).

  OnnxLlama         a GGUF's 4-bit weights on ONNX Runtime (onnx_llama.py): the CPU engine for GGUF models.
  TorchLlama        genlab's own transformer (nn/transformer.py) in float: GPUs, float folders, --dtype.
  TransformersModel any causal LM transformers can load, through its own cache; the fallback.

`load_language_model()` picks one (`engine` auto, onnx or torch). A new backend is a new
class with the same three members, and nothing in decode.py, the CLI or the server changes.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import torch

from genlab.errors import GenlabError
from genlab.nn.transformer import Transformer, UnsupportedArchitecture
from genlab.text.tokenizer import Tokenizer

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class TorchLlama:
    engine = "torch"

    def __init__(self, model: Transformer, tokenizer: Tokenizer, stop_token_ids: set[int]):
        self.model, self.tokenizer, self.stop_token_ids = model, tokenizer, stop_token_ids
        self.context_length = model.cfg.max_seq_len
        self.device = model.lm_head.weight.device
        self.dtype = model.lm_head.weight.dtype
        self.num_parameters = model.num_parameters

    def new_cache(self, max_len: int):
        return self.model.new_cache(max_len)

    @torch.inference_mode()
    def forward(self, ids: list[int], cache) -> torch.Tensor:
        idx = torch.tensor([ids], dtype=torch.long, device=self.device)
        return self.model(idx, cache, last_only=True)[0, -1].cpu()

    @torch.inference_mode()
    def forward_all(self, ids: list[int], cache, count: int) -> torch.Tensor:
        """Append ids; the logits (count, V) after each of the last `count` of them (speculative.py)."""
        idx = torch.tensor([ids], dtype=torch.long, device=self.device)
        return self.model(idx, cache)[0, -count:].cpu()

    def rewind(self, cache, length: int) -> None:
        """Keep the first `length` positions; the next forward overwrites the rest."""
        cache.pos = min(cache.pos, length)


class TransformersModel:
    engine = "torch"  # the torch engine's fallback for shapes TorchLlama does not cover

    def __init__(self, model, tokenizer: Tokenizer, stop_token_ids: set[int]):
        self.model, self.tokenizer, self.stop_token_ids = model, tokenizer, stop_token_ids
        self.context_length = getattr(model.config, "max_position_embeddings", 2048)
        self.device, self.dtype = model.device, model.dtype
        self.num_parameters = sum(p.numel() for p in model.parameters())

    def new_cache(self, max_len: int):
        from transformers import DynamicCache

        return DynamicCache()

    @torch.inference_mode()
    def forward(self, ids: list[int], cache) -> torch.Tensor:
        idx = torch.tensor([ids], dtype=torch.long, device=self.device)
        out = self.model(input_ids=idx, past_key_values=cache, use_cache=True, logits_to_keep=1)
        return out.logits[0, -1].float().cpu()

    @torch.inference_mode()
    def forward_all(self, ids: list[int], cache, count: int) -> torch.Tensor:
        idx = torch.tensor([ids], dtype=torch.long, device=self.device)
        out = self.model(input_ids=idx, past_key_values=cache, use_cache=True, logits_to_keep=count)
        return out.logits[0, -count:].float().cpu()

    def rewind(self, cache, length: int) -> None:
        cache.crop(length)


def pick_dtype(device: torch.device, requested: str = "auto") -> torch.dtype:
    if requested != "auto":
        if requested not in DTYPES:
            raise GenlabError(f"unknown dtype {requested!r}; accepted: auto, {', '.join(DTYPES)}")
        return DTYPES[requested]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return fastest_cpu_dtype()


@functools.cache
def fastest_cpu_dtype() -> torch.dtype:
    """Decoding reads every weight once per token, so half precision halves the work, but
    only on CPUs with fast half-precision kernels (AVX-512 here; plain AVX2 laptops often
    lack them). Measure a decode-shaped matmul in each dtype (~50 ms) instead of guessing.

    The answer is measured once per machine (CPU model and torch version) and kept in
    GENLAB_HOME: a busy moment must not switch the dtype between two runs, or the same seed
    would stop giving the same text."""
    import json

    from genlab.store import atomic_write_bytes, genlab_home

    key = f"{cpu_model()}|torch {torch.__version__}"
    cache = genlab_home() / "cpu_dtype.json"
    try:
        saved = json.loads(cache.read_text())
        if saved.get("key") == key and saved.get("dtype") in DTYPES:
            return DTYPES[saved["dtype"]]
    except (OSError, ValueError):
        pass
    best, best_t = torch.float32, float("inf")
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        elapsed = _time_linear(4096, 1024, dtype)
        if elapsed < best_t * 0.8:  # switch away from fp32 only for a clear win
            best, best_t = dtype, elapsed
    name = next(n for n, d in DTYPES.items() if d == best)
    try:
        atomic_write_bytes(cache, json.dumps({"key": key, "dtype": name}).encode())
    except OSError:
        pass  # a read-only home: measure again next time
    return best


def cpu_model() -> str:
    import platform

    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise GenlabError(f"unknown device {device!r}; accepted: auto, cpu, cuda, cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GenlabError("device 'cuda' was asked for but this machine has no CUDA GPU; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise GenlabError(f"unsupported device {device!r}; accepted: auto, cpu, cuda, cuda:N")
    return dev


ENGINES = ("auto", "onnx", "torch")


def pick_engine(engine: str, device: torch.device, dtype: str, gguf: Path | None) -> str:
    """"onnx" (4-bit, onnx_llama.py) or "torch" (genlab's transformer in float, or transformers).
    auto takes onnx on a CPU for a GGUF model when onnxruntime is installed and measured faster here;
    it never quantises a model that was not quantised already."""
    from genlab.text import onnx_llama

    if engine not in ENGINES:
        raise GenlabError(f"unknown engine {engine!r}; accepted: {', '.join(ENGINES)}", "engine")
    if engine == "torch":
        return "torch"
    if engine == "auto":
        fits = device.type == "cpu" and dtype == "auto" and gguf is not None and onnx_llama.available()
        return "onnx" if fits and fastest_cpu_engine() == "onnx" else "torch"
    if not onnx_llama.available():
        raise GenlabError("engine onnx needs onnxruntime and onnx, which are not installed here: "
                          "pip install onnxruntime onnx (make install does), or choose the torch engine", "engine")
    if device.type != "cpu":
        raise GenlabError(f"engine onnx runs on the CPU; device {device.type} runs on the torch engine", "engine")
    if dtype != "auto":
        raise GenlabError(f"dtype {dtype} needs engine torch: the onnx engine computes with the GGUF's own 4-bit "
                          "weights, so its dtype is auto", "dtype", "engine")
    if gguf is None:
        raise GenlabError("engine onnx runs GGUF models (a bundled model or a .gguf file); a folder of "
                          "float weights runs on the torch engine", "engine")
    return "onnx"


@functools.cache
def fastest_cpu_engine() -> str:
    """Whether a 4-bit ONNX Runtime matmul beats torch's fastest float one for a decode-shaped
    product on this CPU (~0.2 s), measured once per machine and kept, as fastest_cpu_dtype is."""
    from genlab.store import atomic_write_bytes, genlab_home
    from genlab.text import onnx_llama

    import onnxruntime

    key = f"{cpu_model()}|torch {torch.__version__}|onnxruntime {onnxruntime.__version__}"
    cache = genlab_home() / "cpu_engine.json"
    try:
        saved = json.loads(cache.read_text())
        if saved.get("key") == key and saved.get("engine") in ("onnx", "torch"):
            return saved["engine"]
    except (OSError, ValueError):
        pass
    onnx_s, torch_s = quickest(onnx_llama.matmul_probe(4096, 1024)), _time_linear(4096, 1024, fastest_cpu_dtype())
    best = "onnx" if onnx_s < torch_s else "torch"
    try:
        atomic_write_bytes(cache, json.dumps({"key": key, "engine": best, "onnx_s": onnx_s, "torch_s": torch_s}).encode())
    except OSError:
        pass
    return best


def _time_linear(n: int, k: int, dtype: torch.dtype) -> float:
    """Seconds for one decode-shaped (1 x k) @ (k x n) product in `dtype`."""
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(1, k, generator=g).to(dtype), torch.randn(n, k, generator=g).to(dtype)
    return quickest(lambda: torch.nn.functional.linear(x, w))


def quickest(call, rounds: int = 5, calls: int = 8) -> float:
    """Seconds per call of `call()`, from the quickest of `rounds` rounds (the least disturbed by other work)."""
    call()  # warm up
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(calls):
            call()
        best = min(best, (time.perf_counter() - t) / calls)
    return best


def load_language_model(folder: Path, device: str = "auto", dtype: str = "auto", adapter=None,
                        engine: str = "auto", gguf: Path | None = None):
    """Load a Hugging Face model folder as an engine: OnnxLlama (4-bit, from `gguf`, the file the folder
    was converted from), TorchLlama when the shape allows, else transformers.
    `adapter` (a genlab.lora.adapter.Adapter) is merged into the weights first: decoding then costs what the base costs."""
    from genlab.lora.adapter import merge_into

    dev = resolve_device(device)
    dt = pick_dtype(dev, dtype)
    chosen = pick_engine(engine, dev, dtype, gguf)
    config = json.loads((folder / "config.json").read_text())
    tokenizer = Tokenizer.from_folder(folder)
    stop_ids = _stop_token_ids(folder, config, tokenizer)
    if chosen == "onnx":
        return _onnx_engine(folder, gguf, config, tokenizer, stop_ids, adapter)
    try:
        state = _folder_weights(folder)
        if adapter is not None:
            state = merge_into(state, adapter)
        return TorchLlama(Transformer.from_hf(config, state, dtype=dt, device=dev), tokenizer, stop_ids)
    except UnsupportedArchitecture:
        pass
    except (KeyError, RuntimeError, OSError) as e:
        raise GenlabError(f"cannot load the weights in {folder}: {str(e).splitlines()[0][:200]}") from None
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dt).to(dev).eval()
    if adapter is not None:
        model.load_state_dict(merge_into(model.state_dict(), adapter))
    return TransformersModel(model, tokenizer, stop_ids)


def _folder_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a model folder's safetensors files (a torn file is one line naming it)."""
    from genlab.store import load_weights

    state: dict = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_weights(f))
    return state


def _onnx_engine(folder: Path, gguf: Path, config: dict, tokenizer: Tokenizer, stop_ids: set[int], adapter):
    """The 4-bit engine: its graph is built once per GGUF and cached; with an adapter, the adapted layers
    are merged in float, then quantised (merge first, then quantise), and the graph is built afresh."""
    from safetensors import safe_open

    from genlab.text import onnx_llama

    if config.get("model_type") != "llama":
        raise GenlabError(f"engine onnx runs Llama-architecture models; this one is {config.get('model_type')!r}: "
                          "it runs on the torch engine", "engine")
    count = 0
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(f, "pt") as st:
            count += sum(int(torch.Size(st.get_slice(k).get_shape()).numel()) for k in st.keys())
    if adapter is None:
        def graph(slots: int) -> bytes:
            return onnx_llama.cached_build(gguf, folder, slots)
    else:
        from genlab.lora.adapter import merge_into
        from genlab.progress import stage_progress
        from genlab.text.gguf_blocks import GgufWeights

        state = _folder_weights(folder)
        if config.get("tie_word_embeddings") and "lm_head.weight" not in state:
            state["lm_head.weight"] = state["model.embed_tokens.weight"]
        merged = merge_into(state, adapter)
        overrides = {k: v for k, v in merged.items() if v is not state[k]}
        weights = GgufWeights(gguf, overrides)

        def graph(slots: int) -> bytes:
            with stage_progress("Building the 4-bit graph with the adapter merged in (about 8 s here)", 1) as advance:
                advance("merging, quantising and repacking")
                return onnx_llama.build(weights, slots)
    return onnx_llama.OnnxLlama(graph, tokenizer, stop_ids, config.get("max_position_embeddings", 2048), count)


def _stop_token_ids(folder: Path, config: dict, tokenizer: Tokenizer) -> set[int]:
    """Tokens that end a reply: the configs' eos ids plus the chat template's end-of-turn marker."""
    ids: set[int] = set()
    gen = folder / "generation_config.json"
    for source in (config, json.loads(gen.read_text()) if gen.exists() else {}):
        eos = source.get("eos_token_id")
        ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids | tokenizer.special_ids(["<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"])
