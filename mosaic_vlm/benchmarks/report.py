"""Run every side-by-side benchmark in one run and write the report: report.json, report.md (the table the
README includes) and ratios.png (a bar chart of reference / ours: time, or scorer calls for V*). The V*
benchmark needs V*'s two trained models: `mosaic-vlm bench` trains them first (into its report folder); here,
give their folders or the V* benchmark is left out.

    mosaic-vlm bench --output bench-report [--quick]
    python -m mosaic_vlm.benchmarks.report --output bench-report [--vstar-model out/vstar
        --vstar-search-model out/vstar-search] [--quick]
"""

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch

from . import clip, conversion_memory, fast_inference, fuyu_model, fuyu_processing, vstar

# name -> (its entry point, keyword arguments of a full run, of a --quick run); V*'s also takes its two models, the
# conversion memory benchmark a scratch folder under the report's (SCRATCH_FOLDER, removed when it ends)
BENCHMARKS = {
    "bench_clip": (clip.run_clip_benchmark, {}, {"batch_images": 2, "batch_texts": 4, "repeats": 2, "warmup": 1}),
    "bench_fuyu_processing": (fuyu_processing.run_fuyu_processing_benchmark, {}, {"repeats": 2, "size": (320, 240)}),
    "bench_fuyu_model": (fuyu_model.run_fuyu_model_benchmark, {}, {"repeats": 1, "quick": True}),
    "bench_fast_inference": (fast_inference.run_fast_inference_benchmark, {}, {"quick": True}),
    "bench_vstar": (vstar.run_vstar_benchmark, {}, {"questions": 3, "exhaustive": 1, "quick": True}),
    "bench_conversion_memory": (conversion_memory.run_conversion_memory_benchmark, {}, {"quick": True}),
}


SCRATCH_FOLDER = "conversion-memory-scratch"


def cell(value) -> str:
    """A table cell: a dash where a benchmark has no figure (the conversion memory benchmark has no reference)."""
    return "-" if value is None else str(value)


def ratio_rows(name: str, result: dict) -> list[dict]:
    """The (case, ours, reference, unit, ratio) rows a benchmark reports under `cases`; times are in ms
    unless a case names another unit (V* counts scorer calls)."""
    return [
        {
            "benchmark": name,
            "case": row["case"],
            "ours": row.get("ours", row.get("ours_ms")),
            "reference": row.get("reference", row.get("reference_ms", row.get("transformers_ms"))),
            "unit": row.get("unit", "ms"),
            "ratio": row.get("ratio"),
        }
        for row in result.get("cases", [])
    ]


def write_report(output: Path, quick: bool = False, vstar_models: tuple | None = None) -> list[Path]:
    """Runs the benchmarks and writes the report into `output`; returns the paths written. `vstar_models`: V*'s
    answering and search models (folders or (model, processor) pairs); without them the V* benchmark is left
    out. The conversion memory benchmark works in a scratch folder under `output`, removed when it ends."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    processor = platform.processor() or platform.machine()
    machine = f"{processor}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    results, rows = {}, []
    for name, (entry, full_settings, quick_settings) in BENCHMARKS.items():
        inputs = {}
        if name == "bench_vstar":
            if vstar_models is None:
                print(f"== {name}: left out (no trained V* models given)", file=sys.stderr)
                continue
            inputs = dict(zip(("answerer", "searcher"), vstar_models, strict=True))
        if name == "bench_conversion_memory":
            inputs = {"work_dir": output / SCRATCH_FOLDER}  # written under the report's folder, nowhere else
        print(f"== {name}", file=sys.stderr)
        result = entry(**inputs, **(quick_settings if quick else full_settings))
        results[name] = result
        rows += ratio_rows(name, result)
    report = {"machine": machine, "torch": torch.__version__, "quick": quick, "results": results}
    json_path = output / "report.json"
    json_path.write_text(json.dumps(report, indent=2, default=str))

    lines = [f"Machine: {machine}; torch {torch.__version__}; medians of interleaved repeats.", ""]
    lines += ["| benchmark | case | ours | reference | unit | ratio |", "|---|---|---:|---:|---|---:|"]
    for row in rows:
        ours, reference, ratio = (row[k] for k in ("ours", "reference", "ratio"))
        lines.append(
            f"| {row['benchmark']} | {row['case']} | {ours:.1f} | {reference:.1f} | {row['unit']} | {ratio:.2f} |"
            if None not in (ours, reference, ratio)
            else f"| {row['benchmark']} | {row['case']} | {cell(ours)} | {cell(reference)} | {row['unit']} | "
            f"{cell(ratio)} |"
        )
    markdown_path = output / "report.md"
    markdown_path.write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plotted = [row for row in rows if isinstance(row["ratio"], (int, float))]
    figure, axis = plt.subplots(figsize=(8, 0.4 * len(plotted) + 1.5))
    labels = [f"{row['benchmark']}: {row['case']}" for row in plotted]
    axis.barh(labels, [row["ratio"] for row in plotted], color="tab:blue")
    axis.axvline(1.0, color="black", linewidth=1)
    axis.set_xlabel("reference / ours, time or scorer calls (> 1: we are faster or need fewer calls)")
    axis.invert_yaxis()
    figure.tight_layout()
    chart_path = output / "ratios.png"
    figure.savefig(chart_path, dpi=120)
    plt.close(figure)
    return [json_path, markdown_path, chart_path]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("bench-report"), help="report folder")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (a smoke run)")
    parser.add_argument("--vstar-model", type=Path, default=None, help="V*'s trained answering model")
    parser.add_argument("--vstar-search-model", type=Path, default=None, help="V*'s trained search model")
    args = parser.parse_args(argv)
    if (args.vstar_model is None) != (args.vstar_search_model is None):
        parser.error("give both --vstar-model and --vstar-search-model, or neither (then V* is left out)")
    models = (args.vstar_model, args.vstar_search_model) if args.vstar_model else None
    for path in write_report(args.output, args.quick, models):
        print(path)


if __name__ == "__main__":
    main()
