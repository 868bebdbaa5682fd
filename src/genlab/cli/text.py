"""genlab text, genlab chat, genlab models."""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Annotated, Optional

import typer

from genlab.cli import app, read_text_file
from genlab.errors import GenlabError, check, check_text
from genlab.progress import console

# -- shared options --------------------------------------------------------------
Model = Annotated[str, typer.Option("--model", "-m", help="Bundled name, .gguf file, Hugging Face folder or hub id.")]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
Dtype = Annotated[str, typer.Option(help="auto (fastest on this machine), float32, float16 or bfloat16 (engine torch).")]
Engine = Annotated[str, typer.Option(help="auto (the fastest here, measured once), onnx (a GGUF's own 4-bit weights on "
                                          "ONNX Runtime, CPU) or torch (genlab's transformer in float: --dtype, GPUs).")]
Temperature = Annotated[float, typer.Option(help="Randomness; 0 = greedy (always the most likely token).")]
TopK = Annotated[int, typer.Option("--top-k", help="Keep only the K most likely tokens; 0 = off.")]
TopP = Annotated[float, typer.Option("--top-p", help="Keep the most likely tokens up to this total probability; 1 = off.")]
MinP = Annotated[float, typer.Option("--min-p", help="Drop tokens less likely than MIN_P x the top token; 0 = off.")]
RepPenalty = Annotated[float, typer.Option("--repetition-penalty", help="> 1 discourages repeating tokens; 1 = off.")]
MaxNew = Annotated[int, typer.Option("--max-new-tokens", "-n", help="Stop after this many new tokens.")]
Stop = Annotated[Optional[list[str]], typer.Option("--stop", help="Stop before this text; repeat for several.")]
LogitBias = Annotated[Optional[list[str]], typer.Option("--logit-bias", metavar="TOKEN_ID=BIAS",
                                                        help="Add BIAS (-100 to 100) to that token's logit before sampling: "
                                                             "-100 bans it, 100 forces it. Repeat for several.")]
GuidanceScale = Annotated[float, typer.Option("--guidance-scale", help="Classifier-free guidance, as for images: 1 = off, "
                                              "> 1 follows the prompt more closely (1.5-3 is typical; costs a second "
                                              "pass per token).")]
NegativePrompt = Annotated[Optional[str], typer.Option("--negative-prompt", help="With --guidance-scale: steer away from "
                                                       "this text. [default: the prompt's last token]")]
JsonSchema = Annotated[Optional[str], typer.Option("--json-schema", metavar="FILE|JSON",
                                                    help="Answer with JSON valid under this JSON Schema (a file, or the "
                                                         "schema itself); '{}' or 'object' = any JSON object.")]
Regex = Annotated[Optional[str], typer.Option(help="Answer with text matching this regular expression (whole answer).")]
Choice = Annotated[Optional[str], typer.Option(metavar="A,B,C", help="Answer with exactly one of these comma-separated strings.")]
Grammar = Annotated[Optional[str], typer.Option(metavar="FILE", help="Answer with text in this grammar (a file in Lark or "
                                                                     "llama.cpp's GBNF syntax).")]
Seed = Annotated[Optional[int], typer.Option(help="Random seed; the same seed gives the same text. Default: random, printed with --json.")]
System = Annotated[Optional[str], typer.Option(help="System message for chat models.")]
Speculative = Annotated[str, typer.Option(help="Speculative decoding: auto (on where the engine supports it), lookup "
                                                "(guess the next tokens from n-grams of the prompt and the reply; one "
                                                "pass checks them, so the text is what off writes), draft (a small "
                                                "model guesses: --draft) or off.")]
DraftOpt = Annotated[Optional[str], typer.Option("--draft", help="A draft model folder for --speculative draft (make one "
                                                 "with genlab train draft; it must share --model's tokenizer).")]
AdapterOpt = Annotated[Optional[str], typer.Option("--adapter", help="A LoRA adapter folder (genlab finetune text, or "
                                                   "any PEFT LoRA for --model), merged into the weights on load.")]


def _generator(model: str, device: str, dtype: str, adapter: str | None = None, engine: str = "auto", draft: str | None = None):
    # a warm load takes ~1.5 s; the slow cases, first-use conversion and graph building, show their own bars
    from genlab.text.generator import TextGenerator

    return TextGenerator(model, device=device, dtype=dtype, adapter=adapter, engine=engine, draft=draft)


def _sampling(logit_bias: list[str] | None = None, **kw):
    from genlab.autoregressive.sampling import SamplingParams

    kw["stop"] = list(kw.get("stop") or [])
    return SamplingParams(**kw, logit_bias=_bias(logit_bias or []))


def _structure(json_schema: str | None, regex: str | None, choice: str | None, grammar: str | None) -> dict:
    """The structured-output flags as SamplingParams fields (structured.py checks what they hold)."""
    out: dict = {}
    if json_schema is not None:
        text = json_schema.strip()
        if text in ("{}", "object"):
            out["json_schema"] = True
        else:
            if not text.startswith("{"):
                text = read_text_file("--json-schema", json_schema)
            try:
                out["json_schema"] = json.loads(text)
            except json.JSONDecodeError as e:
                raise GenlabError(f"--json-schema is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); give "
                                  "a JSON Schema file or the schema itself") from None
    if regex is not None:
        out["regex"] = regex
    if choice is not None:
        out["choice"] = [c.strip() for c in choice.split(",") if c.strip()]
    if grammar is not None:
        out["grammar"] = read_text_file("--grammar", grammar)
    return out


def _bias(items: list[str]) -> dict[int, float]:
    """--logit-bias 1234=-100 --logit-bias 42=5 -> {1234: -100.0, 42: 5.0}."""
    import re

    bias = {}
    for item in items:
        m = re.fullmatch(r"\s*(\d+)\s*=\s*([-+]?(?:\d+\.?\d*|\.\d+))\s*", item)
        check(m is not None, f"--logit-bias takes TOKEN_ID=BIAS, e.g. 1234=-100, got {item!r}")
        bias[int(m[1])] = float(m[2])
    return bias


@app.command()
def text(
    prompt: Annotated[str, typer.Argument(help="What to write about; wrapped in the chat template unless --raw.")],
    model: Model = "smollm2-135m-instruct",
    temperature: Temperature = 0.7,
    top_k: TopK = 0,
    top_p: TopP = 1.0,
    min_p: MinP = 0.0,
    repetition_penalty: RepPenalty = 1.0,
    logit_bias: LogitBias = None,
    max_new_tokens: Annotated[Optional[int], typer.Option("--max-new-tokens", "-n", help="Stop after this many new tokens. "
                                                          "[default: 256; a masked-diffusion LM fills a block of 64]")] = None,
    stop: Stop = None,
    guidance_scale: GuidanceScale = 1.0,
    negative_prompt: NegativePrompt = None,
    json_schema: JsonSchema = None,
    regex: Regex = None,
    choice: Choice = None,
    grammar: Grammar = None,
    seed: Seed = None,
    system: System = None,
    adapter: AdapterOpt = None,
    speculative: Speculative = "auto",
    draft: DraftOpt = None,
    steps: Annotated[Optional[int], typer.Option(help="Masked-diffusion LMs (pydoc-mdlm): unmasking steps, each one network "
                                                      "call that reveals part of the block. [default: one per token]")] = None,
    raw: Annotated[bool, typer.Option(help="Continue the prompt as plain text instead of answering it as a chat.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object: text, usage, timings, per-token top probabilities.")] = False,
    top_logprobs: Annotated[int, typer.Option("--top-logprobs", help="Candidates per token in --json output (0-20).")] = 5,
    device: Device = "auto",
    dtype: Dtype = "auto",
    engine: Engine = "auto",
):
    """Generate text from a prompt, streaming it to stdout.

    Example: genlab text "Explain attention" --temperature 0 --max-new-tokens 80
    Any text model of `genlab models` works: genlab text "The for statement" --model pydoc-mdlm --steps 16
    Structured: genlab text "A person as JSON" --json-schema person.json   (or --regex, --choice yes,no, --grammar FILE)
    """
    import dataclasses

    check_text("the prompt", prompt)  # argv keeps undecodable bytes as lone surrogates
    if system:
        check_text("--system", system)
    params = _sampling(max_new_tokens=256 if max_new_tokens is None else max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                       repetition_penalty=repetition_penalty, stop=stop, seed=seed, top_logprobs=top_logprobs if as_json else 0,
                       speculative=speculative, logit_bias=logit_bias, guidance_scale=guidance_scale,
                       negative_prompt=negative_prompt, **_structure(json_schema, regex, choice, grammar))
    gen = _generator(model, device, dtype, adapter, engine, draft)
    if gen.unmasker:  # a masked-diffusion LM: a block of tokens, no per-token logprobs
        from genlab.diffusion.unmasking import DEFAULT_TOKENS

        params = dataclasses.replace(params, max_new_tokens=DEFAULT_TOKENS if max_new_tokens is None else max_new_tokens, top_logprobs=0)
    if as_json:
        result = gen.complete(prompt, params=params, system=system, raw=raw, steps=steps)
        from genlab.receipts import text_record

        record = text_record(gen, params, [{"index": 0, "prompt": prompt, "system": system, "raw": raw, "steps": steps,
                                            "seed": result.stats.seed}])
        print(json.dumps(generation_json(gen, result) | {"record": record}, ensure_ascii=False, indent=1))
        return
    from genlab.autoregressive.decode import DecodeStats

    stats = DecodeStats()
    with _unfolding(gen) as on_frame:
        for piece in gen.stream(prompt, params=params, system=system, raw=raw, stats=stats, steps=steps, on_frame=on_frame):
            sys.stdout.write(piece.text)
            sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()  # before the stats line on stderr
    _print_stats(gen, stats)


@contextlib.contextmanager
def _unfolding(gen):
    """For a masked-diffusion LM, the block unmasking on stderr, step by step (░ = still masked)."""
    from genlab.progress import quiet

    if gen.unmasker is None or quiet():
        yield None
        return
    from rich.live import Live
    from rich.text import Text

    with Live(console=console, transient=True, refresh_per_second=12) as live:
        yield lambda step, text: live.update(Text(f"step {step.index}/{step.total}\n{text}"))


def generation_json(gen, result) -> dict:
    tok = gen.tokenizer
    s = result.stats
    return {
        "model": gen.model_name,
        "text": result.text,
        "finish_reason": result.finish_reason,
        "seed": s.seed,
        "usage": {"prompt_tokens": s.prompt_tokens, "completion_tokens": s.completion_tokens},
        "timings": {"load_s": round(gen.load_s, 3), "ttft_s": round(s.ttft_s, 4), "total_s": round(s.total_s, 4),
                    "decode_tokens_per_s": round(s.decode_tokens_per_s, 2)},
        "speculative": {"draft_tokens": s.draft_tokens, "accepted_tokens": s.accepted_tokens,
                        "acceptance_rate": round(s.acceptance_rate, 4)},
        "tokens": [
            {"id": t.token_id, "token": tok.token_text(t.token_id), "logprob": round(t.logprob, 5),
             "top": [{"id": i, "token": tok.token_text(i), "prob": round(p, 5)} for i, p in t.top]}
            for t in result.tokens
        ],
    }


def _print_stats(gen, s) -> None:
    console.print(
        f"[dim]{gen.model_name}: load {gen.load_s:.2f} s · {s.prompt_tokens} prompt tokens · "
        f"first token {s.ttft_s * 1000:.0f} ms · {s.completion_tokens} tokens at {s.decode_tokens_per_s:.1f} tok/s · "
        + (f"{s.accepted_tokens} of {s.draft_tokens} guessed tokens kept · " if s.draft_tokens else "")
        + f"seed {s.seed}[/]"
    )


@app.command()
def chat(
    model: Model = "smollm2-135m-instruct",
    temperature: Temperature = 0.7,
    top_k: TopK = 0,
    top_p: TopP = 1.0,
    min_p: MinP = 0.0,
    repetition_penalty: RepPenalty = 1.0,
    logit_bias: LogitBias = None,
    guidance_scale: GuidanceScale = 1.0,
    negative_prompt: NegativePrompt = None,
    max_new_tokens: MaxNew = 512,
    seed: Seed = None,
    system: System = None,
    adapter: AdapterOpt = None,
    speculative: Speculative = "auto",
    draft: DraftOpt = None,
    device: Device = "auto",
    dtype: Dtype = "auto",
    engine: Engine = "auto",
):
    """Talk with a chat model; the conversation is kept between turns.

    Type /reset to start over and /exit (or Ctrl-D) to quit.
    """
    params = _sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                       repetition_penalty=repetition_penalty, seed=seed, speculative=speculative, logit_bias=logit_bias,
                       guidance_scale=guidance_scale, negative_prompt=negative_prompt)
    if system:
        check_text("--system", system)
    gen = _generator(model, device, dtype, adapter, engine, draft)
    from genlab.autoregressive.decode import DecodeStats

    start = [{"role": "system", "content": system}] if system else []
    messages = list(start)
    console.print(f"[dim]{gen.model_name} loaded in {gen.load_s:.2f} s. /reset starts over, /exit quits.[/]")
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            break
        except UnicodeDecodeError:  # a strict stdin; a lenient one passes lone surrogates, checked below
            raise GenlabError("the prompt is not valid UTF-8; give text encoded as UTF-8") from None
        check_text("the prompt", line)
        if line.strip() in ("/exit", "/quit", "/bye"):
            break
        if line.strip() == "/reset":
            messages = list(start)
            console.print("[dim](conversation cleared)[/]")
            continue
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        stats, reply = DecodeStats(), []
        try:
            for piece in gen.stream(messages=messages, params=params, stats=stats):
                reply.append(piece.text)
                sys.stdout.write(piece.text)
                sys.stdout.flush()
        except GenlabError as e:  # e.g. the conversation outgrew the context window: keep the session
            messages.pop()
            console.print(f"\n[red]genlab: {e}[/] (try /reset)")
            continue
        sys.stdout.write("\n")
        messages.append({"role": "assistant", "content": "".join(reply)})
        _print_stats(gen, stats)
