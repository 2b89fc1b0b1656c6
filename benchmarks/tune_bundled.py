"""Tune the bundled models for this machine's CPU and ship the best records with edgepress.

    .venv/bin/python benchmarks/tune_bundled.py [--minutes resnet18=45,mobilenetv2=35,digits=2]
        [--work build/tune-bundled] [--mcpu NAME] [--no-ship | --ship-only]

--mcpu tunes code for another CPU than this one, timed on this one: `--mcpu znver3` on an
AVX-512 machine makes the records for AVX2-only CPUs (Zen 3), which any build for
`--mcpu znver3` then applies, and which an AVX2-only CPU finds by its own name. The shipped
tuning.json says for each set on which CPU it was timed and for which it was built.

A model written `resnet18+winograd=30` is tuned as built with `--winograd` (its Winograd
kernels are other workloads than the direct ones, so both sets of records are shipped).

Each model is built for x86_64 with `--tune-minutes` and `--retune` into one work database
(kept between runs, so a second run goes on improving the records of the first: the database
keeps the best record of every workload; delete WORK to start over). The shipped records are
ignored while tuning (--no-shipped-records), so the work database alone decides. Then the
best record of every workload is copied into backends/tuning/shipped/<target>/, which every
build for exactly that target (same CPU name, same core count) applies. Records for another machine are
never applied: the folder's target.json must equal the build's target.

Hours of tuning give better records than minutes: the budgets are per model, in minutes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

DEFAULT_MINUTES = "resnet18=45,mobilenetv2=35,digits=2"


def _budgets(text: str) -> dict[str, float]:
    budgets = {}
    for item in text.split(","):
        name, _, minutes = item.partition("=")
        budgets[name.strip()] = float(minutes)
    return budgets


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def _tuned_folder(work: Path, entry: str) -> Path:
    return work / f"{entry.replace('+', '-')}-tuned"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", default=DEFAULT_MINUTES, help="MODEL=MINUTES,...")
    parser.add_argument("--work", type=Path, default=Path("build/tune-bundled"))
    parser.add_argument("--mcpu", help="tune code for this LLVM CPU (default: this machine's)")
    parser.add_argument("--no-ship", action="store_true", help="tune only; do not export")
    parser.add_argument(
        "--ship-only", action="store_true", help="export what WORK holds; tune nothing"
    )
    args = parser.parse_args()

    from edgepress.backends.runtime.threads import size_pool_to_all_cores

    size_pool_to_all_cores()
    from edgepress.backends.targets.base import TargetOptions
    from edgepress.backends.tuning.database import SHIPPED_DIR, export_best_records, target_key
    from edgepress.backends.targets.x86_64 import tvm_target
    from edgepress.compiler.cli import main as compress
    from edgepress.models import EXAMPLES

    mcpu = ["--mcpu", args.mcpu] if args.mcpu else []
    target = tvm_target(TargetOptions(mcpu=args.mcpu))
    args.work = args.work / target["mcpu"]  # one work database per CPU the code is for
    args.work.mkdir(parents=True, exist_ok=True)
    database = args.work / "db"
    facts = {}
    for entry, minutes in _budgets(args.minutes).items():
        name, winograd = entry.removesuffix("+winograd"), entry.endswith("+winograd")
        model = args.work / f"{name}.onnx"
        if not model.exists():
            EXAMPLES[name].write(args.work)
        if args.ship_only:
            continue
        start = time.monotonic()
        code = compress(
            [
                str(model),
                "--target",
                "x86_64",
                "-o",
                str(_tuned_folder(args.work, entry)),
                "--force",
                "-q",
                "--tune-minutes",
                str(minutes),
                "--tuning-db",
                str(database),
                "--no-shipped-records",
                "--retune",
                *mcpu,
                *(["--winograd"] if winograd else []),
            ]
        )
        if code != 0:
            print(f"{name}: the tuning build failed with exit {code}", file=sys.stderr)
            return code
        tuning = json.loads((_tuned_folder(args.work, entry) / "report.json").read_text())
        tuning = tuning["tuning"]
        print(
            f"{entry}: {tuning['trials_measured']} trials in {time.monotonic() - start:.0f} s, "
            f"tuned kernels about {tuning['estimated_total_ms']} ms"
        )
    for entry in _budgets(args.minutes):
        report = json.loads((_tuned_folder(args.work, entry) / "report.json").read_text())
        facts[entry] = {
            "trials": report["tuning"]["trials_measured"],
            "minutes": report["tuning"]["seconds"] / 60,
            "estimated_kernel_ms": report["tuning"]["estimated_total_ms"],
            "cpu": _cpu_name(),  # the machine the trials were timed on
            "built_for": target["mcpu"],  # the LLVM CPU the code was built for
            "float_conv": (report.get("float_conv") or {}).get("kernels", "tvm"),
        }
    if args.no_ship:
        return 0
    destination = SHIPPED_DIR / target_key(target)
    # The work database keeps every earlier run's records, and so do the shipped ones: the
    # facts of models not tuned in this run stay, and a model tuned before keeps its earlier
    # run's facts beside this one's.
    facts_file = destination / "tuning.json"
    shipped = json.loads(facts_file.read_text()) if facts_file.is_file() else {}
    for entry, fact in facts.items():
        if entry in shipped:
            earlier = shipped[entry]
            fact["earlier_runs"] = earlier.pop("earlier_runs", []) + [earlier]
        shipped[entry] = fact
    count = export_best_records(database, destination, target)
    facts_file.write_text(json.dumps(shipped, indent=2) + "\n")
    print(f"shipped {count} records for {json.dumps(target)} in {destination}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
