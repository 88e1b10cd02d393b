"""Render `regnet bench --json` results as markdown tables (for BENCHMARKS.md).

    python benchmarks/render_bench.py benchmarks/results/*.json > benchmarks/results/tables.md

One section per JSON file: the settings, machine and versions, the matmul reference, a table ranked on the
best round, the entries that were not measured with their reasons, cold start and import time, and the notes.
Reads the JSON only (no framework is imported).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def render(report: dict[str, Any]) -> str:
    """One markdown section for one `regnet bench --json` report."""
    model, settings, machine = report["model"], report["settings"], report["machine"]
    size = settings["image_size"]
    lines = [
        f"### {model['name']}, batch {settings['batch']}, {size}x{size}, {settings['dtype']}",
        "",
        f"{model['source']}: {model['gflop_per_image']:.2f} GFLOP per image (2 x multiply-adds), "
        f"{model['params'] / 1e6:.1f}M parameters. {settings['rounds']} interleaved rounds of about "
        f"{settings['round_time']:g} s per entry after {settings['warmup']} warm-up calls; ranked on the best round.",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']} usable), bfloat16 units: "
        + (", ".join(machine["bf16_flags"]) if machine["has_bf16_units"] else "none (bfloat16 is emulated)")
        + f". Python {machine['python']}, "
        + ", ".join(f"{name} {version}" for name, version in report["versions"].items())
        + ".",
    ]
    for matmul in report["matmul"]:
        if matmul["status"] == "ok":
            rate = matmul["gflops_per_second"]
            lines.append(
                f"Reference: {matmul['description']}, {rate['best']:.1f} GFLOP/s best ({rate['median']:.1f} median)."
            )
    best_peer = report["best_peer"]
    lines += [
        "",
        "| rank | entry | img/s best | img/s median | batch-1 ms best | batch-1 ms median | GFLOP/s | % of matmul "
        "| peak RSS MiB | throughput vs best peer | batch-1 speed vs best peer |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in report["entries"]:
        if entry["status"] != "ok":
            continue
        fraction = entry.get("matmul_fraction")
        name = f"**{entry['name']}**" if entry["kind"] == "ours" else entry["name"]
        lines.append(
            f"| {entry['rank']} | {name} | {_num(entry['images_per_second']['best'])} "
            f"| {_num(entry['images_per_second']['median'])} | {_num(entry['latency_ms']['best'], 2)} "
            f"| {_num(entry['latency_ms']['median'], 2)} | {_num(entry['gflops_per_second'])} "
            f"| {_num(None if fraction is None else 100 * fraction)} | {_num(entry.get('peak_rss_mib'), 0)} "
            f"| {_ratio(entry.get('throughput_vs_best_peer'))} | {_ratio(entry.get('latency_vs_best_peer'))} |"
        )
    lines.append("")
    if best_peer["throughput"]:
        lines.append(
            f"Ours in bold. Ratios against the best peer by best round: throughput against {best_peer['throughput']}, "
            f"batch-1 latency against {best_peer['latency']} (above 1x: faster than that peer)."
        )
    else:
        lines.append("Ours in bold. No peer ran: no ratios to a peer.")
    others = [entry for entry in report["entries"] if entry["status"] != "ok"]
    if others:
        lines += ["", "Not measured:", ""]
        lines += [f"- {entry['name']}: {entry['status']}: {entry['reason']}" for entry in others]
    cold = report.get("cold_start")
    if cold:
        lines += ["", "| cold start (process start to first logits, batch 1) | seconds | of which imports | load |"]
        lines.append("|---|---|---|---|")
        for framework, result in cold.items():
            if result["status"] == "ok":
                lines.append(
                    f"| {framework} | {result['seconds']:.2f} | {result['import_seconds']:.2f} "
                    f"| {result['load_seconds']:.2f} |"
                )
            else:
                lines.append(f"| {framework} | {result['status']}: {result['reason']} | | |")
    imports = report.get("import_regnet_core")
    if imports:
        if imports["status"] == "ok":
            verdict = "met" if imports["meets_target"] else "not met"
            lines += [
                "",
                f"`import regnet_core`: {imports['seconds']:.3f} s (target < {imports['target_seconds']} s: {verdict}).",
            ]
        else:
            lines += ["", f"`import regnet_core`: failed: {imports['reason']}."]
    notes = report.get("notes", [])
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Print one markdown section per JSON file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path, metavar="RESULT.json")
    args = parser.parse_args(argv)
    sections = []
    for path in args.files:
        try:
            sections.append(render(json.loads(path.read_text())))
        except (OSError, ValueError, KeyError) as error:
            print(f"render_bench: {path}: {error}", file=sys.stderr)
            return 2
    print("\n".join(sections), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
