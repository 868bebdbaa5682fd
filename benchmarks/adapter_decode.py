"""What a LoRA adapter costs the 4-bit CPU engine's decoding.

    python benchmarks/adapter_decode.py

With --adapter, the layers the adapter changes are merged in float and quantised to 8 bits
(docs/text-engines.md), so they read twice the bytes of the GGUF's 4-bit blocks. This writes a
rank-8 PEFT adapter on every linear of the bundled SmolLM2 (the worst case: every layer at 8 bits)
and decodes 128 greedy tokens plainly with and without it, best of 3.
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GENLAB_QUIET", "1")


def main():
    import peft
    import torch
    from transformers import AutoModelForCausalLM

    from genlab import TextGenerator
    from genlab.autoregressive.decode import DecodeStats
    from genlab.lora.adapter import lora_config
    from genlab.text.engine import cpu_model
    from genlab.text.sources import DEFAULT_TEXT_MODEL, resolve

    folder = tempfile.mkdtemp()
    base = AutoModelForCausalLM.from_pretrained(resolve(DEFAULT_TEXT_MODEL), dtype=torch.float32)
    torch.manual_seed(0)
    model = peft.get_peft_model(base, lora_config(base, 8, 16.0, 0.0, "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"))
    model.peft_config["default"].base_model_name_or_path = DEFAULT_TEXT_MODEL
    model.save_pretrained(folder)
    print(f"# {cpu_model()}, {len(os.sched_getaffinity(0))} cores; onnx engine, 128 greedy tokens, best of 3\n")
    rates = {}
    for label, kw in (("no adapter", {}), ("rank-8 adapter on every linear", {"adapter": folder})):
        gen = TextGenerator(engine="onnx", **kw)
        for _ in range(3):
            stats = DecodeStats()
            for _ in gen.stream("Explain transformer attention in simple terms", temperature=0, max_new_tokens=128,
                                ignore_eos=True, speculative="off", stats=stats):
                pass
            rates[label] = max(rates.get(label, 0.0), stats.decode_tokens_per_s)
        print(f"{label}: {rates[label]:.1f} tok/s")
    print(f"\nwith the adapter: {rates['rank-8 adapter on every linear'] / rates['no adapter']:.2f}x")


if __name__ == "__main__":
    main()
