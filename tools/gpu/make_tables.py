#!/usr/bin/env python3
"""Markdown tables (correctness, timing, sweep) from the results.json that tools/gpu/driver.py writes.

    python3 tools/gpu/make_tables.py RESULTS_JSON > tables.md
"""
import json
import re
import sys


def short_plan(plan):
    return re.sub(r" \(D=[^)]*\)", "", plan.split(" A[")[0].replace("mode=", ""))


def fmt(v, spec=".1e"):
    if v is None:
        return "-"
    if isinstance(v, float):
        return format(v, spec) if v == v else "nan"
    return str(v)


def main():
    d = json.load(open(sys.argv[1]))
    dev = d["device"]
    print(f"Device: **{dev['name']}** (SMs {dev['limits'][0]}, cc {dev['limits'][6]}.{dev['limits'][7]}), "
          f"torch {dev['torch']}, cuDNN {dev['cudnn']}.\n")
    res = d["correctness"]
    npass = sum(r["passed"] for r in res)
    print(f"### Correctness: {npass}/{len(res)} cases pass\n")
    print("Relative error = ||got - ref|| / ||ref|| against the float64 oracle (tests/numpy_reference.py); "
          "16-bit weight cases against the oracle run on the same rounded weights, plus (last column) against "
          "the float32 weights. Outputs, final states and reserve were poisoned with NaN before every call.\n")
    print("| case | pass | output | final h | final c | reserve | vs f32 weights | plan |")
    print("|---|---|---|---|---|---|---|---|")
    for r in res:
        e = r["errors"]
        print(f"| {r['name']} | {'yes' if r['passed'] else '**NO**'} | {fmt(e.get('out'))} | {fmt(e.get('final_h'))} | "
              f"{fmt(e.get('final_c'))} | {fmt(e.get('reserve'))} | {fmt(e.get('out_vs_f32_weights'))} | "
              f"{r['plan'].split(' (D=')[0].replace('mode=', '')} |")
    print()
    print("### Timing (median ms over 30-300 runs, T = 100, fp32 math, TF32 off)\n")
    print("| case | fused kernel (graph) | fused kernel (plain) | input GEMM + kernel (graph) | cuDNN (plain) | "
          "cuDNN (graph) | goal | plan |")
    print("|---|---|---|---|---|---|---|---|")
    for t in d["timing"]:
        f, c = t["fused"], t.get("cudnn", {})
        cp = c.get("plain", {}).get("median")
        cg = c.get("graph", {}).get("median")
        plan = short_plan(t["plan"])
        print(f"| {t['case']} | {f['kernel_graph']['median']:.3f} | {f['kernel_plain']['median']:.3f} | "
              f"{f['full_graph']['median']:.3f} | {fmt(cp, '.3f')} | {fmt(cg, '.3f')} | {fmt(t['goal_ms'], '.2f')} | {plan} |")
    print()
    if d.get("variants"):
        print("### Variants (fused kernel, graph replay, median ms)\n")
        print("| variant | ms | plan |")
        print("|---|---|---|")
        for v in d["variants"]:
            print(f"| {v['variant']} | {fmt(v.get('kernel_graph_ms'), '.3f')} | "
                  f"{short_plan(v.get('plan', v.get('error', '')))} |")
        print()
    if d.get("sweep"):
        print("### Latency vs batch (graph replay, median ms)\n")
        print("| config | B | fused kernel | input GEMM + kernel | cuDNN |")
        print("|---|---|---|---|---|")
        for r in d["sweep"]:
            print(f"| {r['config']} | {r['B']} | {r['kernel_graph']:.3f} | {r['full_graph']:.3f} | "
                  f"{r['cudnn_graph']:.3f} |")


if __name__ == "__main__":
    main()
