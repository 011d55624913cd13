"""Reproduces an open compute-sanitizer synccheck report (session 32). On the small kernel's 8-lane cluster plan
(GRU H=200 B=10 bidirectional T=4, the automatic plan) synccheck reports "Barrier error detected. Missing wait" at
the prologue's mbarrier.arrive.expect_tx, in thread 0 of a few members of most clusters (the same ranks), and the
process then ends with an illegal-address error. Not about short rows: with every length T (variant "full") the
report is the same. memcheck, racecheck and initcheck are clean on the GRU backward suite that runs this forward,
the outputs match float64 and repeat bitwise, and synccheck is clean on the 7 small-cluster sanitizer cases
(tools/gpu/sanitize_cases.py). One variant per process (the error poisons the CUDA context):
  compute-sanitizer --tool synccheck python3 tools/gpu/synccheck_probe.py LIB VARIANT"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sanitize_cases import DevLib, run_case  # noqa: E402

T, B, H = 4, 10, 200
VARIANTS = {
    "full": [T] * B,
    "min2": [4, 2, 3, 4, 2, 3, 4, 2, 3, 4],
    "one1": [4, 1, 3, 4, 2, 3, 4, 2, 3, 4],
    "one0": [4, 0, 3, 4, 2, 3, 4, 2, 3, 4],
}

if __name__ == "__main__":
    lib = DevLib(sys.argv[1])
    name = sys.argv[2]
    r = run_case(lib, name, "gru", "bidirectional", T, B, H, lengths=VARIANTS[name])
    print(f"{'PASS' if r['passed'] else 'FAIL'} {name}: plan {r.get('plan')}", flush=True)
    lib.L.frg_device_reset()
