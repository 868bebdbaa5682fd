"""The report of `genlab compare`: a markdown file, an HTML page and PNG figures, written
from measured numbers only (compare.Results), with the popular claims checked against them.

    report.write(results, Path("compare"))   # compare/report.md, compare/report.html, compare/*.png
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import torch

from ..store import writable_folder
from .measure import CONTENDERS, ROW_STEPS, Results

NAMES = {c.key: c.title for c in CONTENDERS} | {"real digits": "real digits", "real text": "real text"}
REAL = {"image": "real digits", "text": "real text"}  # the reference row under each modality's table


def rows_of(modality: str, real: bool = True) -> list[str]:
    """The table's rows for one modality: each contender of it, in CONTENDERS' order, then the real data."""
    return [c.key for c in CONTENDERS if c.modality == modality] + ([REAL[modality]] if real else [])


def write(r: Results, out: Path) -> Path:
    """Write everything into `out` (created if needed); returns the markdown file."""
    writable_folder(out, "--out")
    figures = {"samples": samples_figure(r, out / "samples.png"), "unfolding": unfolding_figure(r, out / "unfolding.png"),
               "cost": cost_figure(r, out / "cost.png"), "quality": quality_figure(r, out / "quality.png")}
    if r.logs.get("gan"):
        figures["gan_training"] = gan_figure(r, out / "gan_training.png")
    (out / "results.json").write_text(json.dumps({"quick": r.quick, "samples": r.samples, "resumed": r.resumed,
                                                  "rows": r.rows, "curves": r.curves,
                                                  "texts": r.texts, "machine": r.machine, "seconds": r.seconds}, indent=2))
    md = markdown(r, figures)
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(to_html(md))
    return out / "report.md"


# --- the claims ------------------------------------------------------------------------

def claims(r: Results) -> list[tuple[str, str, str]]:
    """(claim, verdict, evidence) for each popular claim, decided by the measurements."""
    rows, curves, out = r.rows, r.curves, []
    lm = curves["lm"]
    one_per_token = all(c["nfe"] == c["tokens"] for c in lm)
    slope, intercept, r2 = linear_fit([c["tokens"] for c in lm], [c["s_per_sample"] for c in lm])
    counted = ", ".join(f"{c['nfe']:.0f}" for c in lm)
    out.append(("LLMs sample one token at a time",
                "supported" if one_per_token and r2 > 0.95 else "contradicted",
                f"counted: the GPT ran {counted} network "
                f"evaluations for {', '.join(str(c['tokens']) for c in lm)} tokens, and its time grows in a straight line, "
                f"{slope * 1e3:.2f} ms per token" + (f" after {intercept * 1e3:.0f} ms of fixed cost" if intercept > 5e-4 else "")
                + f" (R² {r2:.3f}). The masked-diffusion "
                f"LM writes 64 tokens in {curves['diffusion-lm'][0]['nfe']:.0f} to {curves['diffusion-lm'][-1]['nfe']:.0f} evaluations."))
    d = {c["steps"]: c for c in curves["diffusion"]}
    first, last = d[min(d)], d[max(d)]
    ten = d[max(k for k in d if k <= 10)]
    refines = first["fid"] > 2 * last["fid"]
    few_enough = ten["fid"] <= 1.15 * last["fid"]
    out.append(("Diffusion refines over many steps",
                ("supported, though a good solver needs few" if few_enough else "supported") if refines else "contradicted",
                "FID " + ", ".join(f"{c['fid']:.1f} after {c['steps']}" for c in curves["diffusion"])
                + f" DPM-Solver++ steps (real training digits: {rows['real digits']['fid']:.1f})."))
    gan, diff, ar = rows["gan"], rows["diffusion"], rows["ar-image"]
    out.append(("GANs make an image in one step",
                "supported",
                f"1 network evaluation and {gan['s_per_sample'] * 1e3:.2f} ms per image, against {diff['nfe']} evaluations "
                f"and {diff['s_per_sample'] * 1e3:.2f} ms for diffusion at {ROW_STEPS} steps "
                f"({diff['s_per_sample'] / gan['s_per_sample']:.0f}x)."))
    unstable = gan_instability(r)
    if unstable is not None:
        collapsed = gan["diversity"] < 0.6
        out.append(("GANs are unstable",
                    "supported" if collapsed or unstable["swing"] > 0.5 else "not seen here",
                    f"diversity {gan['diversity']:.2f} of the real digits' (diffusion {diff['diversity']:.2f}); the "
                    f"discriminator's loss over the last fifth of training swung by {unstable['swing']:.2f} (its standard "
                    f"deviation over its mean), and its score gap real - generated ended at {unstable['gap']:.2f}."))
    slower_than = [n for n in ("gan", "ar-image") if diff["s_per_sample"] > rows[n]["s_per_sample"]]
    out.append(("Diffusion is slower",
                "supported" if len(slower_than) == 2 else "partly supported" if slower_than else "contradicted",
                f"per image: diffusion ({ROW_STEPS} steps) {diff['s_per_sample'] * 1e3:.2f} ms, GAN {gan['s_per_sample'] * 1e3:.2f} ms, "
                f"pixel GPT {ar['s_per_sample'] * 1e3:.2f} ms (64 evaluations). Quality at those costs: FID {diff['fid']:.1f}, "
                f"{gan['fid']:.1f} and {ar['fid']:.1f}."))
    if "distilled" in rows:
        out.append(distillation_claim(r))
    gpt, dlm = rows["lm"], rows["diffusion-lm"]
    worse = dlm["judge_perplexity"] > 1.2 * gpt["judge_perplexity"]
    better = dlm["judge_perplexity"] < gpt["judge_perplexity"] / 1.2
    out.append(("Diffusion language models match autoregressive ones",
                "contradicted here" if worse else "supported here" if not better else "contradicted: diffusion is better here",
                f"samples judged by an independent model: perplexity {gpt['judge_perplexity']:.0f} for the GPT, "
                f"{dlm['judge_perplexity']:.0f} for masked diffusion at 64 steps (real text {rows['real text']['judge_perplexity']:.0f}). "
                f"Likelihood does not decide it: the GPT's held-out perplexity is {gpt['perplexity']:.1f}, and masked diffusion "
                f"gives only an upper bound, {dlm['perplexity_bound']:.1f}. Training: {_t(gpt.get('train_seconds'))} and "
                f"{_t(dlm.get('train_seconds'))}."))
    return out


def distillation_claim(r: Results) -> tuple[str, str, str]:
    """The rematch: does a 1-step student of the diffusion model run as fast as the GAN, at the teacher's quality?"""
    rows, gan, diff, one = r.rows, r.rows["gan"], r.rows["diffusion"], r.rows["distilled"]
    four = next((c for c in r.curves.get("distilled", []) if c["steps"] == 4), None)
    fast = one["s_per_sample"] <= 3 * gan["s_per_sample"]
    good = one["fid"] <= 1.3 * diff["fid"] and one["accuracy"] >= 0.98
    verdict = "supported" if fast and good else "partly supported: fast, but not the teacher's quality" if fast else "contradicted"
    return ("Distillation closes diffusion's speed gap to the GAN", verdict,
            f"per image: the 1-step student {one['s_per_sample'] * 1e3:.2f} ms ({one['nfe']} evaluation), the GAN "
            f"{gan['s_per_sample'] * 1e3:.2f} ms ({one['s_per_sample'] / gan['s_per_sample']:.1f}x), its {ROW_STEPS}-step teacher "
            f"{diff['s_per_sample'] * 1e3:.2f} ms ({diff['s_per_sample'] / gan['s_per_sample']:.0f}x). FID: student "
            f"{one['fid']:.1f} at 1 step" + (f" and {four['fid']:.1f} at 4" if four else "") + f", teacher {diff['fid']:.1f}, "
            f"GAN {gan['fid']:.1f} (real training digits {rows['real digits']['fid']:.1f}); class accuracy {one['accuracy']:.3f}.")


def linear_fit(x: list[float], y: list[float]) -> tuple[float, float, float]:
    """Least squares y = intercept + slope x; returns (slope, intercept, R²)."""
    X = torch.tensor([[1.0, v] for v in x], dtype=torch.float64)
    Y = torch.tensor(y, dtype=torch.float64)
    coef = torch.linalg.lstsq(X, Y[:, None]).solution[:, 0]
    residual = Y - X @ coef
    r2 = 1 - float(residual.pow(2).sum() / (Y - Y.mean()).pow(2).sum().clamp(min=1e-30))
    return float(coef[1]), float(coef[0]), r2


def gan_instability(r: Results) -> dict | None:
    curve = r.logs.get("gan")
    if not curve:
        return None
    tail = curve[-max(1, len(curve) // 5):]
    d = torch.tensor([row["d_loss"] for row in tail])
    gap = torch.tensor([row["d_real"] - row["d_fake"] for row in tail])
    return {"swing": float(d.std() / d.mean().abs()), "gap": float(gap.mean())}


# --- markdown and HTML -------------------------------------------------------------------

def markdown(r: Results, figures: dict[str, Path]) -> str:
    mode = "quick (the bundled models)" if r.quick else "full (every model retrained from scratch in this run)"
    lines = [f"# genlab compare: {mode}", "",
             f"Measured on this machine ({r.machine.get('cpu', '?')}, {r.machine.get('threads')} threads, torch "
             f"{r.machine.get('torch')}) in {r.seconds:.0f} s. Sampling times, network evaluations (counted) and every "
             f"quality figure come from this run; training times and the GAN's loss curves come from each model's own "
             f"record, written by the trainer when it was trained"
             + (f" (continued from an earlier run here: {', '.join(r.resumed)})" if r.resumed else "") + ". "
             f"Images: {r.samples} samples per family ({r.samples // 10} per class); text: 8 samples of 64 tokens from 4 prompts.", "",
             "## What the measurements say", "", "| claim | verdict | evidence |", "|---|---|---|"]
    lines += [f"| {c} | **{v}** | {e} |" for c, v, e in claims(r)]
    lines += ["", "## Images: handwritten digits", "",
              "| family | parameters | training (its record) | s per image | network evaluations | FID | accuracy | diversity | NLL (bits/dim) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name in rows_of("image"):
        row = r.rows[name]
        lines.append(f"| {NAMES[name]} | {_n(row.get('params'))} | {_t(row.get('train_seconds'))} | {_ms(row.get('s_per_sample'))} "
                     f"| {row.get('nfe', '')} | {row['fid']:.2f} | {row['accuracy']:.3f} | {row['diversity']:.2f} "
                     f"| {_f(row.get('bits_per_dim'), 3)} |")
    lines += ["", "FID uses the digit classifier's features against the 360 held-out digits (lower is better). The real-digits row "
              "scores real training digits the same way: a reference, not a floor, since at this sample size a model that draws "
              "less varied digits than the data can score below it (compare the diversity column). Accuracy is "
              "how often the classifier reads the prompted class; diversity is the mean distance between two samples of the "
              "same class over the real digits' own (1 = as varied as the data). Only the pixel GPT has an exact likelihood; "
              "its 8x8 samples are upsampled as the training digits were before they are judged. "
              + (f"The diffusion model runs classifier-free guidance (scale {r.rows['diffusion']['guidance']}), so each of its "
                 "evaluations is one UNet call on a double batch (with and without the class). "
                 if r.rows["diffusion"].get("guidance", 1) != 1 else "")
              + (f"Its training time: {r.rows['diffusion']['train_note']}." if r.rows["diffusion"].get("train_note") else ""),
              "", f"![samples]({figures['samples'].name})", "", "Diffusion sampling steps (DPM-Solver++):", "",
              "| steps | evaluations | s per image | FID | accuracy | diversity |", "|---|---|---|---|---|---|"]
    lines += [f"| {c['steps']} | {c['nfe']} | {_ms(c['s_per_sample'])} | {c['fid']:.2f} | {c['accuracy']:.3f} | {c['diversity']:.2f} |"
              for c in r.curves["diffusion"]]
    if r.curves.get("distilled"):
        lines += ["", f"The distilled student (rectified-flow reflow from the diffusion model's {r.rows['distilled']['teacher_steps']}-step "
                  f"samples, guidance {r.rows['distilled']['guidance']} distilled in: one evaluation per step):", "",
                  "| steps | evaluations | s per image | FID | accuracy | diversity |", "|---|---|---|---|---|---|"]
        lines += [f"| {c['steps']} | {c['nfe']} | {_ms(c['s_per_sample'])} | {c['fid']:.2f} | {c['accuracy']:.3f} | {c['diversity']:.2f} |"
                  for c in r.curves["distilled"]]
    lines += ["", "## Text: Python's documentation", "",
              "| family | parameters | training (its record) | s per 64 tokens | network evaluations | held-out perplexity | judged perplexity | distinct bigrams |",
              "|---|---|---|---|---|---|---|---|"]
    for name in rows_of("text"):
        row = r.rows[name]
        ppl = _f(row.get("perplexity"), 1) if "perplexity" in row else ("<= " + _f(row["perplexity_bound"], 1)
                                                                       if "perplexity_bound" in row else "")
        lines.append(f"| {NAMES[name]} | {_n(row.get('params'))} | {_t(row.get('train_seconds'))} | {_ms(row.get('s_per_sample'))} "
                     f"| {_f(row.get('nfe'), 0)} | {ppl} | {row['judge_perplexity']:.1f} | {row['distinct_2']:.3f} |")
    lines += ["", "Held-out perplexity is on the last tenth of the corpus, which neither model trained on; the masked-diffusion "
              "model's is an upper bound (its ELBO). Judged perplexity scores the samples with SmolLM2-135M, an independent "
              "model; lower reads more like real text, but repetitive text also scores low, so distinct bigrams sit beside it.",
              "", "Masked diffusion, unmasking steps for 64 tokens:", "",
              "| steps | s per sample | judged perplexity | distinct bigrams |", "|---|---|---|---|"]
    lines += [f"| {c['steps']} | {_ms(c['s_per_sample'])} | {c['judge_perplexity']:.1f} | {c['distinct_2']:.3f} |"
              for c in r.curves["diffusion-lm"]]
    lines += ["", "## Cost and quality against compute", "", f"![cost]({figures['cost'].name})", "",
              f"![quality]({figures['quality'].name})", "", "## One sample, step by step", "",
              f"![unfolding]({figures['unfolding'].name})", "",
              "The GPT writes left to right (the text after 4, 8, 16 and 32 new tokens); masked diffusion fills in "
              "everywhere at once (after a quarter, half, three quarters and all of its 32 steps; ░ is a masked token, ⏎ a line break):", ""]
    one_line = lambda t: t.replace("\n", " ⏎ ")  # noqa: E731
    lines += ["```"] + [f"GPT  {one_line(t)}" for t in r.unfolding["lm"]] + [""] + \
        [f"MDLM {one_line(t)}" for t in r.unfolding["diffusion-lm"]] + ["```"]
    if "gan_training" in figures:
        lines += ["", "## GAN training", "", f"![gan training]({figures['gan_training'].name})"]
    lines += ["", "## Samples", ""]
    for name in rows_of("text", real=False):
        lines += [f"{NAMES[name]}:", "", "```"] + [t.replace("\n", " ")[:300] for t in r.texts[name][:4]] + ["```", ""]
    lines += ["Raw numbers: results.json."]
    return "\n".join(lines) + "\n"


def to_html(md: str) -> str:
    """The markdown as a standalone page: headings, tables, images, code blocks and paragraphs."""
    body, in_code, table = [], False, []

    def inline(text: str) -> str:
        import re

        text = html.escape(text)
        text = re.sub(r"!\[([^\]]*)\]\(([^)]+)\)", r'<img alt="\1" src="\2">', text)
        return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)

    def flush_table():
        if table:
            head, *rest = [[c.strip() for c in row.strip("|").split("|")] for row in table if not set(row) <= set("|-")]
            body.append("<table><tr>" + "".join(f"<th>{inline(c)}</th>" for c in head) + "</tr>"
                        + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in row) + "</tr>" for row in rest) + "</table>")
            table.clear()

    for line in md.splitlines():
        if line.startswith("```"):
            flush_table()
            body.append("</pre>" if in_code else "<pre>")
            in_code = not in_code
        elif in_code:
            body.append(html.escape(line))
        elif line.startswith("|"):
            table.append(line)
        else:
            flush_table()
            if line.startswith("#"):
                level = len(line) - len(line.lstrip("#"))
                body.append(f"<h{level}>{inline(line.lstrip('# '))}</h{level}>")
            elif line.strip():
                body.append(f"<p>{inline(line)}</p>")
    flush_table()
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
             "img{max-width:100%}pre{background:#f5f5f5;padding:1em;overflow-x:auto;white-space:pre-wrap}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>genlab compare</title><style>{style}</style></head>"
            f"<body>{''.join(body)}</body></html>\n")


def _n(x) -> str:
    return "" if x is None else f"{x / 1e6:.2f}M"


def _t(seconds) -> str:
    return "" if seconds is None else f"{seconds / 60:.1f} min"


def _ms(seconds) -> str:
    return "" if seconds is None else f"{seconds * 1e3:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _f(x, digits: int) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


# --- figures ----------------------------------------------------------------------------

def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    return plt


def _finish(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _sheet(x: torch.Tensor, columns: int = 10) -> torch.Tensor:
    """(N, 1, H, W) in [-1, 1] -> one (rows*H, columns*W) picture in [0, 1], padded by a pixel."""
    x = (x.float().clamp(-1, 1) + 1) / 2
    x = torch.nn.functional.pad(x, (0, 1, 0, 1), value=0.3)
    n, _, h, w = x.shape
    rows = -(-n // columns)
    x = torch.cat([x, torch.full((rows * columns - n, 1, h, w), 0.3)])
    return x.view(rows, columns, h, w).permute(0, 2, 1, 3).reshape(rows * h, columns * w)


def samples_figure(r: Results, path: Path) -> Path:
    plt = _plt()
    names = rows_of("image", real=False)
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.2))
    for ax, name in zip(axes, names):
        ax.imshow(_sheet(r.images[name]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        row = r.rows[name]
        ax.set_title(f"{NAMES[name]}\n{row['nfe']} evaluations, FID {row['fid']:.1f}", fontsize=10)
        ax.axis("off")
    return _finish(fig, path)


def unfolding_figure(r: Results, path: Path) -> Path:
    """A diffusion trajectory (x_t after each step) above the pixel GPT filling in its pixels."""
    from ..image.canvas import from_pil

    plt = _plt()
    diffusion = [from_pil(im) for im in r.unfolding["diffusion"]]
    pixels = r.unfolding["ar-image"]
    fig, axes = plt.subplots(2, 1, figsize=(12, 3.6))
    for ax, frames, title in ((axes[0], torch.cat(diffusion), "diffusion: x_t after each of 8 DPM-Solver++ steps"),
                              (axes[1], torch.stack(pixels), "pixel GPT: after 8, 16, ... 64 pixels (grey: not drawn yet)")):
        ax.imshow(_sheet(frames, columns=len(frames)), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    return _finish(fig, path)


def cost_figure(r: Results, path: Path) -> Path:
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    lm = r.curves["lm"]
    left.plot([c["tokens"] for c in lm], [c["s_per_sample"] for c in lm], "o-", label="GPT (one evaluation per token)")
    left.set_xlabel("tokens generated")
    left.set_ylabel("seconds per sample")
    left.set_title("autoregressive text: cost against output length")
    left.legend()
    for name, label in (("diffusion", "image diffusion (one 16x16 image)"), ("diffusion-lm", "masked diffusion LM (64 tokens)")):
        c = r.curves[name]
        right.plot([p["steps"] for p in c], [p["s_per_sample"] for p in c], "o-", label=label)
    right.set_xlabel("sampling steps")
    right.set_ylabel("seconds per sample")
    right.set_yscale("log")
    right.set_title("diffusion: cost against steps")
    right.legend()
    return _finish(fig, path)


def quality_figure(r: Results, path: Path) -> Path:
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    d = r.curves["diffusion"]
    left.plot([p["nfe"] for p in d], [p["fid"] for p in d], "o-", label="diffusion (DPM-Solver++ steps)")
    if r.curves.get("distilled"):
        s = r.curves["distilled"]
        left.plot([p["nfe"] for p in s], [p["fid"] for p in s], "D-", label="distilled student (1, 2, 4 steps)")
    for name, marker in ((c.key, c.marker) for c in CONTENDERS if c.modality == "image" and c.key not in ("diffusion", "distilled")):
        left.plot([r.rows[name]["nfe"]], [r.rows[name]["fid"]], marker, markersize=9, label=NAMES[name])
    left.axhline(r.rows["real digits"]["fid"], color="gray", linestyle="--", label="real training digits")
    left.set_xscale("log")
    left.set_xlabel("network evaluations per image")
    left.set_ylabel("FID (lower is better)")
    left.set_title("images: quality against compute")
    left.legend()
    m = r.curves["diffusion-lm"]
    right.plot([p["nfe"] for p in m], [p["judge_perplexity"] for p in m], "o-", label="masked diffusion LM (steps)")
    right.plot([r.rows["lm"]["nfe"]], [r.rows["lm"]["judge_perplexity"]], "s", markersize=9, label="GPT")
    right.axhline(r.rows["real text"]["judge_perplexity"], color="gray", linestyle="--", label="real text")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("network evaluations per 64 tokens")
    right.set_ylabel("judged perplexity (lower is better)")
    right.set_title("text: quality against compute")
    right.legend()
    return _finish(fig, path)


def gan_figure(r: Results, path: Path) -> Path:
    plt = _plt()
    curve = r.logs["gan"]
    steps = [row["step"] for row in curve]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.6))
    left.plot(steps, [row["d_loss"] for row in curve], label="discriminator loss")
    left.plot(steps, [row["g_loss"] for row in curve], label="generator loss")
    left.set_xlabel("step")
    left.legend()
    left.set_title("the two players' losses")
    right.plot(steps, [row["d_real"] for row in curve], label="D(real)")
    right.plot(steps, [row["d_fake"] for row in curve], label="D(generated)")
    right.set_xlabel("step")
    right.legend()
    right.set_title("the discriminator's mean scores")
    return _finish(fig, path)
