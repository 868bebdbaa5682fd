"""The same seeds still give the same outputs from every bundled model (recorded in tests/data/bundled_outputs.json
by tests/bundled_outputs.py before the code around the models was reorganised).

Token ids must match exactly. Pixels are uint8 after the models' float arithmetic, whose last bits may differ
between CPUs (oneDNN picks kernels by instruction set): a pixel may round one level the other way, never more.
"""

import base64
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from bundled_outputs import RECORD, outputs  # noqa: E402

RECORDED = json.loads(RECORD.read_text())
FAST = ["digits", "digits-gan", "digits-ar", "pydoc-gpt", "pydoc-mdlm"]


def _check(name, got):
    want = RECORDED[name]
    if "pixels" in want:
        assert got["shape"] == want["shape"]
        a = np.frombuffer(base64.b64decode(got["pixels"]), np.uint8).astype(int)
        b = np.frombuffer(base64.b64decode(want["pixels"]), np.uint8).astype(int)
        assert np.abs(a - b).max() <= 1, f"{name}: pixels differ by up to {np.abs(a - b).max()} levels"
        assert (a != b).mean() < 0.01, f"{name}: {(a != b).mean():.1%} of pixels differ"
    else:
        assert got == want


@pytest.mark.parametrize("name", FAST)
def test_bundled_model_outputs_unchanged(name):
    _check(name, outputs([name])[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["shapes", "smollm2-135m-instruct"])
def test_bundled_model_outputs_unchanged_slow(name):
    _check(name, outputs([name])[name])
