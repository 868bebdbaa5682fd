"""Atomic writes and corruption detection for everything genlab caches."""

import pytest

from genlab.store import atomic_dir, manifest_ok, write_manifest


def make_folder(path):
    with atomic_dir(path) as tmp:
        (tmp / "weights.bin").write_bytes(bytes(range(256)) * 4096)
        (tmp / "config.json").write_text("{}")
        write_manifest(tmp)
    return path


def test_complete_folder_verifies(tmp_path):
    assert manifest_ok(make_folder(tmp_path / "m"))


@pytest.mark.parametrize("damage", ["truncate", "overwrite", "delete", "no-manifest"])
def test_damage_is_detected(tmp_path, damage):
    folder = make_folder(tmp_path / "m")
    w = folder / "weights.bin"
    if damage == "truncate":
        w.write_bytes(w.read_bytes()[:-100])
    elif damage == "overwrite":
        data = bytearray(w.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one byte in the middle: a spot the sampled fingerprint reads
        data[:10] = b"0123456789"
        w.write_bytes(bytes(data))
    elif damage == "delete":
        (folder / "config.json").unlink()
    else:
        (folder / "genlab-manifest.json").unlink()
    assert not manifest_ok(folder)


def test_failed_write_leaves_no_folder(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "m") as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_gguf_conversion_requirements_are_installed():
    """transformers reads GGUF only with both of these; a missing one breaks first use of the bundled model."""
    from transformers.utils import is_accelerate_available, is_gguf_available

    assert is_gguf_available() and is_accelerate_available()
