"""Test set-up: import from the repo root, quiet TensorFlow, shared helpers."""
import os
import sys
import zlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.join(ROOT, "tests")):
    if path not in sys.path:
        sys.path.insert(0, path)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

SHARED = os.environ.get("FUSED_RNN_SHARED") or os.path.join(os.path.dirname(ROOT), "shared")


def rel_err(got, want):
    """max |got - want| / max |want|: float32 against float64 lands far under 1e-5."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert np.all(np.isfinite(got)), "non-finite values in the result"
    return float(np.max(np.abs(got - want), initial=0.0) / max(np.max(np.abs(want), initial=0.0), 1e-30))


@pytest.fixture
def rng(request):
    # A different seed per test, derived from its name, and reproducible run to run: crc32, not hash(), whose
    # string hashing is salted per process (that made every run draw new inputs, and a failure unreproducible).
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
