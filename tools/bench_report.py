#!/usr/bin/env python3
"""Reads the JSON lines `visiond bench --json` and `tools/hf_bench.py --json` print (any mix,
any number of rounds) and states the ratio: per (model, device, dtype, batch), each tool's
median ms_p50 over its rounds, images/s from it, and visiond's speed as a multiple of
transformers'. Optionally draws images/s by batch size, visiond beside transformers, as PNG.

    python tools/bench_report.py out/bench.json [--chart out/bench.png] [--title TEXT] [--markdown]
"""

import argparse
import json
import statistics
import sys
from collections import defaultdict

TOOLS = ("visiond", "transformers")


def read(path):
    results = []
    with open(path) as lines:
        for number, line in enumerate(lines, 1):
            line = line.strip()
            if not line:
                continue
            try:
                results.append(json.loads(line))
            except json.JSONDecodeError as error:
                sys.exit(f"{path}:{number}: not a JSON object: {error}")
    return results


def summarize(results):
    """{(model, device, dtype, batch): {tool: (median ms_p50, rounds, size, gflop/img)}}"""
    grouped = defaultdict(lambda: defaultdict(list))
    for r in results:
        key = (r["model"], r["device"], r["dtype"], r["batch"])
        grouped[key][r["tool"]].append(r)
    table = {}
    for key, by_tool in grouped.items():
        table[key] = {}
        for tool, runs in by_tool.items():
            ms = statistics.median(run["ms_p50"] for run in runs)
            size = f"{runs[0]['height']}x{runs[0]['width']}"
            table[key][tool] = (ms, len(runs), size, runs[0].get("gflop_per_img"))
    return table


def rows(table):
    out = []
    for (model, device, dtype, batch), tools in sorted(table.items()):
        v = tools.get("visiond")
        t = tools.get("transformers")
        ratio = t[0] / v[0] if v and t else None
        size = (v or t)[2]
        out.append((model, size, device, dtype, batch, v, t, ratio))
    return out


def print_table(rows, markdown):
    def img_s(entry, batch):
        return f"{batch * 1e3 / entry[0]:.1f}" if entry else "-"

    def ms(entry):
        return f"{entry[0]:.2f}" if entry else "-"

    if markdown:
        print("| model (input) | batch | visiond ms | transformers ms | visiond img/s | transformers img/s | visiond ÷ transformers |")
        print("|---|---|---|---|---|---|---|")
        for model, size, device, dtype, batch, v, t, ratio in rows:
            r = f"{ratio:.2f}×" if ratio else "-"
            print(f"| {model} ({size}) | {batch} | {ms(v)} | {ms(t)} | {img_s(v, batch)} | {img_s(t, batch)} | {r} |")
        return
    print(f"{'model':<16} {'input':>7} {'device':<7} {'dtype':<5} {'batch':>5} {'visiond ms':>11} "
          f"{'hf ms':>9} {'visiond img/s':>14} {'hf img/s':>10} {'ratio':>7}")
    for model, size, device, dtype, batch, v, t, ratio in rows:
        r = f"{ratio:.2f}x" if ratio else "-"
        print(f"{model:<16} {size:>7} {device:<7} {dtype:<5} {batch:>5} {ms(v):>11} {ms(t):>9} "
              f"{img_s(v, batch):>14} {img_s(t, batch):>10} {r:>7}")


def chart(rows, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r[0] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(3.2 * len(models), 3.4), squeeze=False)
    for ax, model in zip(axes[0], models):
        mine = [r for r in rows if r[0] == model]
        batches = sorted({r[4] for r in mine})
        width = 0.38
        for offset, (tool, index, colour) in enumerate(
            [("visiond", 5, "#1f77b4"), ("transformers", 6, "#ff7f0e")]
        ):
            values = []
            for b in batches:
                entry = next((r[index] for r in mine if r[4] == b), None)
                values.append(b * 1e3 / entry[0] if entry else 0)
            xs = [i + (offset - 0.5) * width for i in range(len(batches))]
            ax.bar(xs, values, width, label=tool, color=colour)
        ax.set_xticks(range(len(batches)), [str(b) for b in batches])
        ax.set_xlabel("batch size")
        ax.set_title(f"{model} ({mine[0][1]})", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("images/s")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"chart written to {path}", file=sys.stderr)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("results")
    parser.add_argument("--chart")
    parser.add_argument("--title", default="visiond vs transformers eager")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    table = rows(summarize(read(args.results)))
    if not table:
        sys.exit(f"{args.results}: no results")
    print_table(table, args.markdown)
    if args.chart:
        chart(table, args.chart, args.title)


if __name__ == "__main__":
    main()
