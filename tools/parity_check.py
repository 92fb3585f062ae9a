#!/usr/bin/env python3
"""visiond against the transformers references of the fixture checkpoints on a chosen device
and dtype: every case in tests/fixtures/reference/*/cases.json goes through `visiond infer
--pixel-values` (the runtime's own path: CUDA graphs on a GPU unless --eager), and its saved
output is compared with the reference output.

    python tools/parity_check.py --visiond PATH [--device cuda] [--dtype f32,f16] [--eager]
        [--allow-tf32 false] [--jobs 8] [--json]

The error of a case is max|visiond - reference| / max(max|reference|, 1), the scale the CPU
parity tests (tests/model_parity.rs) hold to 1e-4. Prints one line per case (JSON with --json)
and a summary per dtype: the worst case and how many exceeded the limit (--limit-f32,
--limit-f16, --limit-bf16). Exits 1 when a case fails to run or exceeds its limit.
"""

import argparse
import concurrent.futures
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
LIMITS = {"f32": 1e-4, "f16": 5e-3, "bf16": 5e-2}


def cases():
    for cases_file in sorted((FIXTURES / "reference").glob("*/cases.json")):
        spec = json.loads(cases_file.read_text())
        model_dir = FIXTURES / spec["model_dir"]
        for case in spec["cases"]:
            yield spec["model"], model_dir, cases_file.parent / case["file"], case["output"], case["name"]


def run_case(args, dtype, model, model_dir, file, output_key, name, scratch):
    saved = Path(scratch) / f"{model}-{name}-{dtype}.safetensors"
    command = [
        args.visiond, "infer", "--model", str(model_dir), "--pixel-values", str(file),
        "--device", args.device, "--dtype", dtype, "--allow-tf32", args.allow_tf32,
        "--save", str(saved),
    ]
    if args.eager:
        command.append("--eager")
    if (model_dir / "model.pt").exists():
        command += ["--task", "depth"]
    result = {"model": model, "case": name, "device": args.device, "dtype": dtype}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        result["error"] = (done.stderr.strip() or done.stdout.strip())[-400:]
        return result
    got = load_file(saved)[output_key].float()
    expected = load_file(file)[output_key].float()
    if got.shape != expected.shape:
        result["error"] = f"shape {list(got.shape)}, expected {list(expected.shape)}"
        return result
    scale = max(expected.abs().max().item(), 1.0)
    result["error_rel"] = (got - expected).abs().max().item() / scale
    result["limit"] = LIMITS[dtype]
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--visiond", required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="f32,f16")
    parser.add_argument("--eager", action="store_true")
    parser.add_argument("--allow-tf32", default="false", choices=["true", "false"],
                        help="f32 on CUDA: TF32 off by default here, so f32 is compared as f32")
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    for dtype, limit in LIMITS.items():
        parser.add_argument(f"--limit-{dtype}", type=float, default=limit)
    args = parser.parse_args()
    for dtype in LIMITS:
        LIMITS[dtype] = getattr(args, f"limit_{dtype}")
    dtypes = [d.strip() for d in args.dtype.split(",") if d.strip()]
    results = []
    with tempfile.TemporaryDirectory() as scratch, concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = [
            pool.submit(run_case, args, dtype, *case, scratch) for dtype in dtypes for case in cases()
        ]
        for future in futures:
            result = future.result()
            results.append(result)
            if args.json:
                print(json.dumps(result), flush=True)
            elif "error" in result:
                print(f"{result['model']}/{result['case']} {result['dtype']}: FAILED: {result['error']}")
            else:
                flag = "" if result["error_rel"] <= result["limit"] else f"  > {result['limit']:.0e}"
                print(f"{result['model']}/{result['case']} {result['dtype']}: {result['error_rel']:.2e}{flag}")
    bad = 0
    for dtype in dtypes:
        mine = [r for r in results if r["dtype"] == dtype]
        failed = [r for r in mine if "error" in r]
        measured = [r for r in mine if "error_rel" in r]
        over = [r for r in measured if r["error_rel"] > r["limit"]]
        worst = max(measured, key=lambda r: r["error_rel"], default=None)
        bad += len(failed) + len(over)
        summary = {
            "summary": True, "device": args.device, "dtype": dtype, "cases": len(mine),
            "failed": len(failed), "over_limit": len(over), "limit": LIMITS[dtype],
            "worst": worst and f"{worst['model']}/{worst['case']}",
            "worst_error_rel": worst and worst["error_rel"],
        }
        print(json.dumps(summary) if args.json else
              f"{dtype}: {len(mine)} cases, worst {summary['worst_error_rel']:.2e} ({summary['worst']}), "
              f"{len(over)} over {LIMITS[dtype]:.0e}, {len(failed)} failed to run", flush=True)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
