"""report.json (for machines) and report.md (for people) of one build."""

from __future__ import annotations

import json
from pathlib import Path


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _num(x: float | None, fmt: str = ".3g") -> str:
    return "-" if x is None else format(x, fmt)


def write_json(report: dict, path: Path) -> None:
    path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")


def verification_lines(title: str, v: dict) -> list[str]:
    lines = [f"### {title}", "", f"Status: **{v['status']}** (reference: {v['reference']})", ""]
    if v.get("outputs"):
        tol = v.get("tolerance") or {}
        lines.append(
            f"Tolerance: atol {tol.get('atol')}, rtol {tol.get('rtol')}, "
            f"min cosine {tol.get('min_cosine')}"
        )
        lines += [
            "",
            "| output | ok | max abs err | max rel err | cosine | mismatched | problem or note |",
            "|---|---|---|---|---|---|---|",
        ]
        for o in v["outputs"]:
            lines.append(
                f"| {o['name']} | {'yes' if o['ok'] else 'NO'} | {_num(o['max_abs_err'])} | "
                f"{_num(o['max_rel_err'])} | {_num(o['cosine'], '.7f')} | "
                f"{o['mismatched'] if o['mismatched'] is not None else '-'} | "
                f"{o['problem'] or o.get('note') or ''} |"
            )
    steps = [o for o in v.get("outputs") or [] if o.get("step")]
    if steps:
        lines.append("")
        lines += [
            f"int8 output `{o['name']}`: grid step {o['step']:g}; {o['off_by_one_step']} of "
            f"{o['elements']} elements one step off, {o['mismatched']} more than one."
            for o in steps
        ]
    lines.append("")
    return lines


def fidelity_table(rows: list[dict]) -> list[str]:
    lines = [
        "| output | cosine | least cosine of a sample | max abs err | mean abs err | "
        "top-1 agreement |",
        "|---|---|---|---|---|---|",
    ]
    for f in rows:
        top1 = "-" if f["top1_agreement"] is None else f"{f['top1_agreement']:.4f}"
        least = f.get("min_cosine", f["cosine"])
        lines.append(
            f"| {f['name']} | {f['cosine']:.6f} | {least:.6f} | {_num(f['max_abs_err'])} | "
            f"{_num(f['mean_abs_err'])} | {top1} |"
        )
    return [*lines, ""]


def top1_lines(e: dict, kind: str) -> list[str]:
    """The --eval top-1 of the float model against the `kind` ("pruned", "int8") one."""
    return [
        f"Top-1 on {e['samples']} labelled --eval samples: float {e['float']:.4f}, {kind} "
        f"{e[kind]:.4f} (drop {100 * (e['float'] - e[kind]):.2f} points).",
        "",
    ]


def pruning_lines(p: dict) -> list[str]:
    target = (
        f"remove {p['ratio']:.0%} of the prunable channels"
        if p["ratio"] is not None
        else f"keep at most {p['flops']:.0%} of the MACs"
    )
    data = f" on `{p['calibration']}`" if p.get("calibration") else " (no calibration data)"
    lines = [
        "## Pruning",
        "",
        f"Target: {target}. Removed {p['removed_channels']} of {p['prunable_channels']} "
        f"prunable channels; importance {p['importance']}, group ratios from "
        f"{p['ratios_from']}, recovery {p['recovery']}{data}.",
        "",
        f"MACs {p['macs_before'] / 1e6:.2f} M -> {p['macs_after'] / 1e6:.2f} M "
        f"({p['macs_after'] / max(p['macs_before'], 1):.3f}x); parameters "
        f"{human_size(p['param_bytes_before'])} -> {human_size(p['param_bytes_after'])} "
        f"({p['param_bytes_after'] / max(p['param_bytes_before'], 1):.3f}x).",
        "",
        "Channel groups (layers whose widths are tied: residual streams, depthwise pairs):",
        "",
        "| group | layers | channels | kept | ratio | output error at 25/50/75% alone |",
        "|---|---|---|---|---|---|",
    ]
    for g in p["groups"]:
        sens = g.get("sensitivity")
        curve = " / ".join(f"{e:.3g}" for e in sens.values()) if sens else "-"
        lines.append(
            f"| {g['name']} | {len(g['layers'])} | {g['channels']} | {g['kept']} | "
            f"{g['ratio']:.2f} | {curve} |"
        )
    lines += [
        "",
        "| layer | output channels | kept | MACs before | after | parameters before | after |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {lay['name']} | {lay['channels']} | {lay['kept']} | {lay['macs']:,} | "
        f"{lay['macs_after']:,} | {lay['params']:,} | {lay['params_after']:,} |"
        for lay in p["layers"]
    ]
    lines.append("")
    fits = [f for f in p.get("reconstruction", []) if f["error_before"] == f["error_before"]]
    if fits:
        lines += [
            f"Least-squares reconstruction of {len(fits)} layer(s): relative output error on "
            "calibration samples, mean over layers "
            f"{sum(f['error_before'] for f in fits) / len(fits):.4g} -> "
            f"{sum(f['error_after'] for f in fits) / len(fits):.4g}.",
            "",
        ]
    if p.get("finetune"):
        ft = p["finetune"]
        lines += [
            f"Fine-tuned {ft['epochs']} epoch(s) on {ft['samples']} samples of `{ft['data']}`: "
            f"loss {ft['loss_first_epoch']:.4f} -> {ft['loss_last_epoch']:.4f}.",
            "",
        ]
    if p.get("fidelity"):
        lines += ["Fidelity against the float model on held-out calibration samples:", ""]
        lines += fidelity_table(p["fidelity"])
    if p.get("eval_top1"):
        lines += top1_lines(p["eval_top1"], "pruned")
    return lines


def quantization_lines(q: dict, sizes: dict) -> list[str]:
    source, model = sizes.get("source model"), sizes.get("model.onnx")
    ratio = f" ({model / source:.2f}x of the source file)" if source and model else ""
    lines = [
        "## Quantization",
        "",
        f"int8: weights {q['weights']}, activations {q['activations']}; calibrated by "
        f"{q['method']} on {q['samples']} sample(s) of `{q['calibration']}` "
        f"({q['calibrated_tensors']} tensors). model.onnx: {human_size(model)}{ratio}.",
        "",
        "Fidelity of model.onnx (in onnxruntime) against the float source on "
        f"{q['fidelity_samples']} sample(s), "
        f"{q['fidelity_data']}:",
        "",
        *fidelity_table(q.get("fidelity", [])),
    ]
    if q.get("artifact_fidelity"):
        floor = f" (the fidelity floor: {q['fidelity_floor']:g})" if q.get("fidelity_floor") else ""
        lines += [
            "The artifact itself, on the same samples, against the float model int8 started "
            f"from{floor}:",
            "",
            *fidelity_table(q["artifact_fidelity"]),
        ]
    if q.get("eval_top1"):
        lines += top1_lines(q["eval_top1"], "int8")
    if q.get("equalized_pairs") is not None:
        lines += [f"Cross-layer equalization: {q['equalized_pairs']} conv pair(s).", ""]
    if q.get("bias_correction"):
        bc = q["bias_correction"]
        lines += [
            f"Bias correction: {bc['layers']} layer(s); largest mean shift removed "
            f"{bc['largest_shift']:.4g}.",
            "",
        ]
    budget = q.get("budget")
    if budget:
        what = budget.get("what") or f"accuracy drop at most {budget['max_drop']:g}"
        lines += [
            f"Budget: {what} ({budget['units']}, at most {budget['max_drop']:.4g}): all "
            f"int8 {budget['all_int8_drop']:.4g}, final {budget['final_drop']:.4g} "
            f"({'met' if budget['met'] else 'NOT met'}).",
            "",
        ]
    if q.get("float_layers"):
        lines += ["Layers kept in float:", ""]
        lines += [f"- `{f['layer']}`: {f['why']}" for f in q["float_layers"]]
        lines.append("")
    if q.get("layer_sqnr_db"):
        lines += [
            "Per-layer SQNR (int8 against float, error accumulated up to the layer; plot: "
            "sqnr.png):",
            "",
            "| layer | SQNR dB |",
            "|---|---|",
        ]
        lines += [f"| {name} | {db:.1f} |" for name, db in q["layer_sqnr_db"]]
        lines.append("")
    return lines


def _layer_table(layers: list[dict], otherwise: str) -> list[str]:
    """Each layer of a lowering with its kernel, or `otherwise` and why it kept that."""
    if not layers:
        return []
    lines = ["| layer | op | computed as |", "|---|---|---|"]
    for layer in layers:
        how = layer["kernel"] or f"{otherwise}: {layer['reason']}"
        lines.append(f"| {layer.get('node', layer['index'])} | {layer['op']} | {how} |")
    return lines + [""]


def float_conv_lines(f: dict) -> list[str]:
    lines = ["## Float convolutions", ""]
    if f["kernels"] == "tvm":
        return lines + [f"Conv/Gemm/MatMul compiled with TVM's own kernels: {f['why']}.", ""]
    layers = f["layers"]
    lowered = [layer for layer in layers if layer["kernel"]]
    lines += [
        f"{len(lowered)} of {len(layers)} Conv/Gemm/MatMul layer(s) run as edgepress's NHWC "
        f"kernels (register tiles of {f['lanes']}-lane float32 vectors).",
        "",
    ]
    integer = [layer for layer in layers if layer["kernel"] == "integer"]
    if integer:
        lines += [
            f"{len(integer)} of them are dynamic quantization's integer products (MatMulInteger, "
            "DynamicQuantizeLSTM): int8 weights on the int8 dot-product kernels, the input's "
            "run-time zero point taken off in int32.",
            "",
        ]
    return lines + _layer_table(layers, "TVM")


def int8_compute_lines(i: dict) -> list[str]:
    lines = ["## int8 compute", ""]
    if i["compute"] == "float":
        return lines + [f"QDQ layers compiled as float arithmetic with rounding: {i['why']}.", ""]
    layers = i["layers"]
    if not layers:  # a QuantizeLinear with no QDQ layer: a dynamic quantization's
        none = "No Conv/Gemm/MatMul layer between DequantizeLinear and QuantizeLinear."
        return lines + [none, ""]
    lowered = [layer for layer in layers if layer["kernel"]]
    instruction = f"`{i['intrinsic']}`" if i.get("intrinsic") else "no dot-product intrinsic"
    lines += [
        f"{len(lowered)} of {len(layers)} Conv/Gemm/MatMul layer(s) run as integer kernels "
        f"(int8 weights, int32 accumulation, requantized in the kernel): activations "
        f"{i['act_dtype']}, {i['lanes']} output channels per weight block, {instruction}.",
        "",
    ]
    if i.get("amx"):
        lines += [
            "This CPU has AMX: the convs and matmuls into whole 16-channel blocks whose input "
            "channels are whole 64-channel slices, or padded to them with at most half as "
            "many again, run on its tiles (the `conv2d_int8_amx` kernels), the others as above.",
            "",
        ]
    return lines + _layer_table(layers, "float")


def tuning_lines(tuning: dict | None, kernels: list[dict]) -> list[str]:
    lines = ["## Tuning", ""]
    if not tuning:
        lines += ["No tuning records for this target: every kernel has its fallback schedule.", ""]
    else:
        where = [f"database `{tuning['database']}`"] if tuning.get("database") else []
        if tuning.get("shipped"):
            where.append(f"shipped records `{tuning['shipped']}`")
        total = tuning.get("estimated_total_ms")
        lines += [
            f"Records from {' and '.join(where)}; {tuning['trials_measured']} trial(s) measured "
            f"in this build ({tuning['seconds']:.0f} s)"
            + (f", tuned kernels estimated at {total:.4g} ms" if total is not None else "")
            + ".",
            "",
            "| task | weight | tuned | record from |",
            "|---|---|---|---|",
        ]
        for t in tuning["tasks"]:
            lines.append(
                f"| {t['name']} | {t['weight']:g} | {'yes' if t['tuned'] else 'no'} | "
                f"{t.get('record') or '-'} |"
            )
        lines.append("")
    if kernels:
        counts: dict[str, int] = {}
        for k in kernels:
            counts[k["schedule"]] = counts.get(k["schedule"], 0) + 1
        total_flops = sum(k["flops"] for k in kernels)
        lines += [
            f"Kernels: {len(kernels)} ("
            + ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
            + f"), {total_flops / 1e6:.4g} MFLOP per run. 'tuned': a tuning record; 'sampled': "
            "one untimed sample of MetaSchedule's default CPU schedules; 'dlight': dlight's GPU "
            "rules; 'loops': none of these (TVM's plain loops, one thread). "
            "'compress bench --profile' times each kernel.",
            "",
        ]
    return lines


def render_markdown(report: dict) -> str:
    lines = [
        f"# edgepress build: {report['source']['path']} -> {report['target']['name']}",
        "",
        f"Status: **{report['status']}**",
        "",
    ]
    upgrade = report["source"].get("opset_upgrade")
    if upgrade:
        reference = (
            "and that conversion is the reference below"
            if upgrade["reference"] == "converted"
            else "and checked against the source as given"
        )
        lines += [
            f"Converted from opset {upgrade['from']} to {upgrade['to']} with onnx's version "
            f"converter ({upgrade['why']}), {reference}.",
            "",
        ]
    lines += ["## Sizes", "", "| file | bytes | size |", "|---|---|---|"]
    for name, n in report["sizes"].items():
        lines.append(f"| {name} | {n} | {human_size(n)} |")
    lines += [
        "",
        "## Passes",
        "",
        "| pass | changes | nodes before | nodes after | param bytes before | after | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    unchanged = []
    for p in report["passes"]:
        failed = (p.get("details") or {}).get("failed")
        if failed:
            lines.append(f"| {p['name']} | skipped: {failed.replace('|', '/')} | | | | | |")
            continue
        if not p["changes"] and p["param_bytes_before"] == p["param_bytes_after"]:
            unchanged.append(p["name"])
            continue
        lines.append(
            f"| {p['name']} | {p['changes']} | {p['nodes_before']} | {p['nodes_after']} | "
            f"{p['param_bytes_before']} | {p['param_bytes_after']} | {p['seconds']:.2f} |"
        )
    if unchanged:
        lines += ["", f"Ran without changes: {', '.join(unchanged)}."]
    lines += ["", "## Verification", ""]
    lines += verification_lines(
        "Artifact vs onnxruntime on the source model", report["verification"]["artifact"]
    )
    lines += verification_lines(
        "model.onnx (after passes) vs the source model, both in onnxruntime",
        report["verification"]["passes"],
    )
    if report.get("pruning"):
        lines += pruning_lines(report["pruning"])
    if report.get("quantization"):
        lines += quantization_lines(report["quantization"], report["sizes"])
    if report.get("int8_compute"):
        lines += int8_compute_lines(report["int8_compute"])
    if report.get("float_conv"):
        lines += float_conv_lines(report["float_conv"])
    lines += tuning_lines(report.get("tuning"), report.get("kernels") or [])
    lines += ["## Build", "", "TVM target:", ""]
    for key, value in report["target"]["tvm"].items():
        lines.append(f"- {key}: {', '.join(value) if isinstance(value, list) else value}")
    description = report["target"].get("description")
    if description:
        dot = description.get("dot") or {}
        lines += [
            "",
            f"What it can do: float32 vectors of {description['float_lanes'] or '-'} lanes, "
            f"{description['vector_registers']} vector registers, int8 dot product "
            f"{dot.get('intrinsic') or 'none'}"
            + (f" ({dot['act_dtype']} activations, {dot['lanes']} lanes)" if dot else "")
            + ".",
        ]
    notes = report["target"].get("notes", {})
    if notes:
        lines.append("")
    for key, value in notes.items():
        lines.append(f"- {key}: {value}")
    lines += ["", "| stage | seconds |", "|---|---|"]
    for stage, seconds in report["timings_s"].items():
        lines.append(f"| {stage} | {seconds:.2f} |")
    lines.append("")
    return "\n".join(lines)


def bench_markdown(bench: dict) -> str:
    """bench.json as markdown (bench.md): the speed table and the kernel profile."""
    report = bench
    lines = [f"# edgepress bench: {bench['artifact']}", "", f"Measured on {bench['machine']}.", ""]
    if "bench" in report:
        b = report["bench"]
        lines += [
            "## Speed",
            "",
            f"{b['threads']} thread(s), median of {b['repeat']} runs after {b['warmup']} "
            f"warm-up runs, same inputs, one run ({b['runner']}).",
            "",
            "| | median ms | p90 ms |",
            "|---|---|---|",
            f"| artifact | {b['artifact_ms']:.3f} | {b['artifact_p90_ms']:.3f} |",
            f"| onnxruntime | {b['onnxruntime_ms']:.3f} | {b['onnxruntime_p90_ms']:.3f} |",
            "",
            f"Speedup (onnxruntime / artifact): **{b['speedup']:.3f}x**",
            "",
        ]
        if b.get("onnxruntime_int8_ms"):
            lines += [
                f"onnxruntime on the int8 model.onnx: {b['onnxruntime_int8_ms']:.3f} ms; "
                f"speedup against it: **{b['speedup_vs_onnxruntime_int8']:.3f}x**; "
                f"onnxruntime int8 against its fp32: "
                f"{b['onnxruntime_ms'] / b['onnxruntime_int8_ms']:.3f}x.",
                "",
            ]
    if report.get("kernel_profile"):
        profile = report["kernel_profile"]
        lines += ["## Kernel profile", "", profile["markdown"]]
        if profile.get("picture"):
            lines += ["", f"![time per kernel against its roofline]({profile['picture']})", ""]
    return "\n".join(lines)
