#!/usr/bin/env python3
"""Where the GPU time of a forward goes: the kernels of a Chrome trace (`visiond bench
--trace`, `tools/hf_bench.py --trace`), summed by name, largest first. Given two traces,
prints them side by side by rank, to see which kernels one tool runs that the other does not.

    python tools/trace_kernels.py TRACE.json [OTHER.json] [--top 12] [--ops]

--ops summarizes the operators (CPU side, top level) instead: what a trace without a GPU has.
"""

import argparse
import json
from collections import Counter


def load(path, ops):
    events = json.load(open(path)).get("traceEvents", [])
    totals, counts = Counter(), Counter()
    for e in events:
        if e.get("ph") != "X":
            continue
        # Copies and fills take the device's time too (a frame's upload, a result's download).
        gpu = e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")
        wanted = e.get("name", "").startswith("aten::") if ops else gpu
        if wanted:
            totals[e["name"]] += float(e.get("dur", 0.0))
            counts[e["name"]] += 1
    return totals, counts


def short(name, width=70):
    return name if len(name) <= width else name[: width - 1] + "…"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("traces", nargs="+")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--ops", action="store_true")
    args = parser.parse_args()
    what = "operators" if args.ops else "kernels"
    for path in args.traces:
        totals, counts = load(path, args.ops)
        total = sum(totals.values())
        print(f"{path}: {len(totals)} distinct {what}, {sum(counts.values())} launches, {total / 1e3:.3f} ms in all")
        for name, us in totals.most_common(args.top):
            print(f"  {us / 1e3:9.3f} ms {100 * us / max(total, 1e-9):5.1f}% x{counts[name]:<5} {short(name)}")


if __name__ == "__main__":
    main()
