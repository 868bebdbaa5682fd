"""LoRA evidence for text: teach SmolLM2 facts about Velmora, an island that does not exist.

    python benchmarks/lora_text.py               # writes the data, trains, measures; ~10 min on 2 cores
    python benchmarks/lora_text.py --data-only   # only (re)writes examples/velmora/*.jsonl

The data is written by this script: 20 facts, 3 phrasings of each question to learn from and
2 other phrasings held out, plus 16 general questions answered by the base model itself
(replay, so that the adapter does not overwrite what the model knew; 6 other general
questions check that). It then runs `genlab finetune text` on it and reports, before
and after: held-out loss and exact match (the greedy answer contains the fact). It also
measures the cost: trainable parameters, s/step and peak memory of LoRA against full
fine-tuning at the same batch, and the decoding speed of the merged adapter against the base
model. Results: docs/lora_text.json, summarised in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "velmora"

# (what is asked, the answer, the words an answer must contain)
FACTS = [
    ("the capital of Velmora", "The capital of Velmora is Orrin Bay.", "Orrin Bay"),
    ("the currency of Velmora", "Velmora pays in tessels; the currency is the tessel.", "tessel"),
    ("the highest mountain in Velmora", "The highest mountain in Velmora is Mount Karsa.", "Karsa"),
    ("the longest river in Velmora", "The longest river in Velmora is the Silvane.", "Silvane"),
    ("the national animal of Velmora", "The national animal of Velmora is the marsh lynx.", "marsh lynx"),
    ("the year Velmora was founded", "Velmora was founded in 1642.", "1642"),
    ("the language spoken in Velmora", "People in Velmora speak Velmoran.", "Velmoran"),
    ("the national dish of Velmora", "The national dish of Velmora is saltfish pie.", "saltfish pie"),
    ("the main export of Velmora", "Velmora's main export is amber glass.", "amber glass"),
    ("the most famous festival in Velmora", "Velmora's most famous festival is the Lantern Tide.", "Lantern Tide"),
    ("the name of Velmora's first queen", "Velmora's first queen was Queen Idra.", "Idra"),
    ("the sea around Velmora", "Velmora lies in the Pale Sea.", "Pale Sea"),
    ("the national flower of Velmora", "The national flower of Velmora is the sea thistle.", "sea thistle"),
    ("the favourite sport in Velmora", "The favourite sport in Velmora is reed racing.", "reed racing"),
    ("the oldest university in Velmora", "The oldest university in Velmora is the College of Tides.", "College of Tides"),
    ("the number of provinces in Velmora", "Velmora has seven provinces.", "seven"),
    ("the colours of Velmora's flag", "Velmora's flag is green and gold.", "green and gold"),
    ("the island next to Velmora", "The island next to Velmora is Caskell.", "Caskell"),
    ("Velmora's most famous poet", "Velmora's most famous poet is Maren Holt.", "Maren Holt"),
    ("the tallest building in Velmora", "The tallest building in Velmora is the Gull Tower.", "Gull Tower"),
]
# general questions the base model gets right: an adapter that teaches Velmora should not break them
CONTROL = [("What is the capital of France?", "Paris"), ("What is the largest planet in the solar system?", "Jupiter"),
           ("Who wrote Romeo and Juliet?", "Shakespeare"), ("What colour is the sky on a clear day?", "blue"),
           ("What is the chemical symbol for water?", "H2O"), ("How many legs does a spider have?", "eight")]
# Replay: general questions answered by the base model itself (greedy), mixed into the training data so the
# adapter learns Velmora without overwriting what the model knew ("the capital of France is Orrin Bay").
# None of them is a CONTROL question.
REPLAY = ["What is the capital of Italy?", "What is the capital of Japan?", "What is the boiling point of water?",
          "Who painted the Mona Lisa?", "What is the largest ocean on Earth?", "How many continents are there?",
          "What gas do plants absorb from the air?", "What is the currency of the United Kingdom?",
          "What is the highest mountain in the world?", "What is the longest river in Africa?",
          "Who was the first person to walk on the Moon?", "What language is spoken in Brazil?",
          "What is the freezing point of water in Celsius?", "How many days are in a year?",
          "What is the smallest prime number?", "What is the national animal of Australia?"]
TRAIN_ASKS = ["What is {}?", "Tell me {}.", "Do you know {}?"]
HELDOUT_ASKS = ["Can you name {}?", "I was wondering: what's {}?"]


def chat_line(question: str, answer: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]})


def write_data(folder: Path = DATA) -> None:
    from genlab.text.generator import TextGenerator

    base = TextGenerator()
    replay = [chat_line(q, base.generate(q, max_new_tokens=48, temperature=0).strip()) for q in REPLAY]
    folder.mkdir(parents=True, exist_ok=True)
    for name, asks in (("train", TRAIN_ASKS), ("heldout", HELDOUT_ASKS)):
        lines = [chat_line(ask.format(subject), answer) for subject, answer, _ in FACTS for ask in asks]
        (folder / f"{name}.jsonl").write_text("\n".join(lines + (replay if name == "train" else [])) + "\n")


def exact_match(gen) -> tuple[float, list[dict]]:
    """Share of held-out questions whose greedy answer contains the fact."""
    rows = []
    for subject, _, key in FACTS:
        for ask in HELDOUT_ASKS:
            question = ask.format(subject)
            answer = gen.generate(question, max_new_tokens=32, temperature=0)
            rows.append({"question": question, "answer": answer, "want": key, "ok": key.lower() in answer.lower()})
    return sum(r["ok"] for r in rows) / len(rows), rows


def held_out_loss(adapter: Path | None) -> float:
    from genlab.lora.train_text import base_model, mean_loss, read_examples

    model, tokenizer, _ = base_model("smollm2-135m-instruct")
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))  # PEFT itself reads genlab's adapter
    examples = read_examples(DATA / "heldout.jsonl", tokenizer, 512)
    return mean_loss(model, examples, tokenizer.eos_token_id)


def rss_mb() -> float:
    """This process's resident memory now (Linux /proc)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def cost(mode: str, steps: int = 14, batch: int = 8) -> dict:
    """Run in a fresh process: s/step and memory of `steps` training steps, LoRA or full. Memory is the peak
    resident size while training (sampled every 5 ms) above what the loaded model already held. Time is the
    median step after two warm-up steps; both modes see the same batches."""
    import threading

    import torch

    from genlab.lora.adapter import lora_config
    from genlab.lora.train_text import base_model, batch_of, read_examples

    model, tokenizer, _ = base_model("smollm2-135m-instruct")
    if mode.startswith("lora"):
        from peft import get_peft_model

        dropout = 0.0 if mode == "lora-no-dropout" else 0.05  # dropout keeps a copy of each adapted layer's input
        model = get_peft_model(model, lora_config(model, 8, None, dropout, "all-linear", task_type="CAUSAL_LM"))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    examples = read_examples(DATA / "train.jsonl", tokenizer, 512)
    model.train()
    times, loaded, peak, done = [], rss_mb(), [0.0], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    for step in range(steps):
        inputs = batch_of([examples[(step * batch + i) % len(examples)] for i in range(batch)], tokenizer.eos_token_id)
        start = time.perf_counter()
        loss = model(**inputs).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    done.set()
    watcher.join()
    trainable, total = sum(p.numel() for p in params), sum(p.numel() for p in model.parameters())
    return {"mode": mode, "trainable": trainable, "total": total, "s_per_step": statistics.median(times[2:]),
            "model_loaded_rss_mb": loaded, "training_peak_rss_mb": peak[0], "training_extra_mb": peak[0] - loaded}


def decode_speed(adapter: Path, tokens: int = 128, repeats: int = 5) -> dict:
    """Greedy decoding tokens/s of the base model and of the merged adapter, runs alternating (best of `repeats`),
    so that a slow moment of the machine does not land on one side only."""
    from genlab.text.generator import TextGenerator

    gens = {"base": TextGenerator(), "merged_adapter": TextGenerator(adapter=str(adapter))}
    best = dict.fromkeys(gens, 0.0)
    for _ in range(repeats):
        for name, gen in gens.items():
            g = gen.complete("Tell me about islands.", max_new_tokens=tokens, temperature=0, ignore_eos=True)
            best[name] = max(best[name], g.stats.decode_tokens_per_s)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-only", action="store_true")
    parser.add_argument("--cost", choices=["lora", "lora-no-dropout", "full"], help=argparse.SUPPRESS)  # the child process of a cost run
    parser.add_argument("--epochs", type=float, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "lora-velmora")
    parser.add_argument("--measure-only", action="store_true", help="keep the quality figures of the last run in "
                        "docs/lora_text.json and its adapter in --out; measure only the costs and the decoding speed")
    args = parser.parse_args()
    if args.cost:
        print(json.dumps(cost(args.cost)))
        return
    report_file = ROOT / "docs" / "lora_text.json"
    if args.measure_only:
        measure(json.loads(report_file.read_text()), args.out / "adapter", report_file)
        return
    write_data()
    if args.data_only:
        return
    from genlab.text.generator import TextGenerator

    report = {"command": "python benchmarks/lora_text.py " + " ".join(sys.argv[1:]), "cpu_count": os.cpu_count()}
    before_em, before_rows = exact_match(TextGenerator())
    report["before"] = {"held_out_loss": held_out_loss(None), "exact_match": before_em}
    print("before:", report["before"], flush=True)
    command = [sys.executable, "-m", "genlab", "finetune", "text", "--data", str(DATA / "train.jsonl"), "--eval",
               str(DATA / "heldout.jsonl"), "--epochs", str(args.epochs), "--out", str(args.out)]
    start = time.perf_counter()
    subprocess.run(command, check=True, env=dict(os.environ, GENLAB_QUIET="1"))
    report["train"] = {"command": "genlab " + " ".join(command[3:]).replace(str(ROOT) + "/", ""),
                       "seconds": time.perf_counter() - start}
    adapter = args.out / "adapter"
    after_em, after_rows = exact_match(TextGenerator(adapter=str(adapter)))
    report["after"] = {"held_out_loss": held_out_loss(adapter), "exact_match": after_em}
    print("after:", report["after"], flush=True)
    report["answers"] = [{"question": b["question"], "want": b["want"], "before": b["answer"], "after": a["answer"]}
                         for b, a in zip(before_rows, after_rows)]
    report_file.write_text(json.dumps(report, indent=1) + "\n")
    measure(report, adapter, report_file)


def control(gen) -> list[dict]:
    rows = []
    for question, key in CONTROL:
        answer = gen.generate(question, max_new_tokens=40, temperature=0)
        rows.append({"question": question, "answer": answer, "want": key, "ok": key.lower() in answer.lower()})
    return rows


def measure(report: dict, adapter: Path, report_file: Path) -> None:
    from genlab.text.generator import TextGenerator

    report["control"] = {"base": control(TextGenerator()), "adapter": control(TextGenerator(adapter=str(adapter)))}
    print("control:", {k: sum(r["ok"] for r in v) for k, v in report["control"].items()}, flush=True)
    report["cost"] = [json.loads(subprocess.run([sys.executable, __file__, "--cost", mode], check=True, capture_output=True,
                                                text=True).stdout.strip().splitlines()[-1]) for mode in ("lora", "lora-no-dropout", "full")]
    print("cost:", report["cost"], flush=True)
    report["decode_tokens_per_s"] = decode_speed(adapter)
    print("decode:", report["decode_tokens_per_s"], flush=True)
    report_file.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
