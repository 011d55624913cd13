"""Reproduces a compute-sanitizer synccheck report of session 32, explained in session 33 as the tool's: the same
report comes from a 60-line copy of the exchange protocol (tools/gpu/mbarrier_probe.cu), only in cluster ranks >= 8
(non-portable sizes) on SMs shared with another cluster's block, never with portable clusters of 8 under the same
sharing; values right, memcheck and racecheck clean (bench/gpu/sanitizer/synccheck_cluster_probe_session33.txt).
Session 32's description follows. On the small kernel's 8-lane cluster plan
(GRU H=200 B=10 bidirectional T=4, the automatic plan: clusters of 16) synccheck reports "Barrier error detected.
Missing wait" at the prologue's mbarrier.arrive.expect_tx, in thread 0 of a few members of most clusters, and the
process then ends with an illegal-address error. Not about short rows: with every length T (variant "full") the
report is the same. It grows with the grid (0 errors at B=1-2, 1 at B=4, 41 at B=10; perhaps once clusters share
SMs) and comes from ranks 8, 9, 14 and 15 of the clusters. memcheck, racecheck and initcheck are clean on the GRU
backward suite that runs this forward, the outputs match float64 and repeat bitwise, and synccheck is clean on the
7 small-cluster sanitizer cases (tools/gpu/sanitize_cases.py). One variant per process (the error poisons the CUDA
context):
  compute-sanitizer --tool synccheck python3 tools/gpu/synccheck_probe.py LIB VARIANT
VARIANT: a name in VARIANTS, or B=<rows> for that many full-length rows."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sanitize_cases import Call, DevLib, run_case  # noqa: E402

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
    b = B
    if name.startswith("B="):  # every row full, this many rows
        b = int(name[2:])
        VARIANTS[name] = [T] * b
    print(f"plan: {Call(lib, 'gru', 'bidirectional', T, b, H).describe()}", flush=True)
    r = run_case(lib, name, "gru", "bidirectional", T, b, H, lengths=VARIANTS[name])
    print(f"{'PASS' if r['passed'] else 'FAIL'} {name}: plan {r.get('plan')}", flush=True)
    lib.L.frg_device_reset()
