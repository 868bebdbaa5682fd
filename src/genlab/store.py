"""Where genlab keeps files, and how it writes them so a kill never leaves half a file.

Everything genlab caches or trains lives under GENLAB_HOME (default ~/.cache/genlab).
Writes go to a temporary name in the same folder and are renamed into place: a rename
is atomic, so a reader sees the old file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path


def genlab_home() -> Path:
    return Path(os.environ.get("GENLAB_HOME") or Path.home() / ".cache" / "genlab").expanduser()


@contextlib.contextmanager
def atomic_dir(final: Path):
    """Yield a temporary folder next to `final`; on success it replaces `final` in one rename."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def fingerprint(path: Path, blocks: int = 64, block_size: int = 1 << 16) -> str:
    """A cheap content check: sha256 over `blocks` evenly spaced blocks plus the size.

    Hashing all of a 0.5 GB weight file costs 1.5 s, most of a warm load; this costs
    milliseconds and still catches truncation and overwritten regions.
    """
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        for i in range(blocks):
            f.seek(max(0, (size - block_size) * i // max(1, blocks - 1)))
            h.update(f.read(block_size))
    return h.hexdigest()


MANIFEST = "genlab-manifest.json"


def write_manifest(folder: Path, **info) -> None:
    """Record a fingerprint of every file in `folder`; written last, so its presence means complete."""
    files = {p.name: fingerprint(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    atomic_write_bytes(folder / MANIFEST, json.dumps({"files": files, **info}, indent=1).encode())


def manifest_ok(folder: Path) -> bool:
    """True when `folder` has a manifest and every file in it still matches its fingerprint."""
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
        return all(fingerprint(folder / name) == fp for name, fp in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def weights_folder(name: str) -> Path:
    """Where a model genlab trained itself ships: genlab/weights/<name> inside the installed package."""
    from importlib import resources

    return Path(str(resources.files("genlab") / "weights" / name))


def bundled_weights(name: str, command: str) -> Path:
    """A shipped model's folder, or one clear error naming the command that builds it."""
    from .errors import check

    folder = weights_folder(name)
    check(folder.is_dir() and any(folder.glob("*.json")),
          f"the bundled model {name!r} is missing from {folder}; build it with `{command}` and copy its model/ folder there")
    return folder


def writable_folder(folder: Path, what: str) -> None:
    """Create `folder` if needed and prove it takes a file: one clear error now, not after an hour of work."""
    from .errors import GenlabError

    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".genlab-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise GenlabError(f"{what} {str(folder)!r} is not a writable folder: {e.strerror or e}") from None
