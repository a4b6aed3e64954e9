"""`train`, `bench` and `demo`: the package's recipes, benchmarks and main job."""

import argparse
import importlib
from pathlib import Path


def add_train_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="run a Trainer recipe (clip, fuyu or vstar) on the bundled digits and scenes",
        description="Run the Trainer recipe mosaic_vlm.training.<recipe>; everything after the recipe name goes to "
        "its own parser (HfArgumentParser: every TrainingArguments flag works; see `mosaic-vlm train RECIPE --help`).",
        epilog="example:\n  mosaic-vlm train clip --output_dir out/clip --num_train_epochs 20 --learning_rate 2e-3",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("recipe", choices=("clip", "fuyu", "vstar"), help="which recipe: clip, fuyu, or V*'s models (vstar)")
    parser.add_argument("recipe_args", nargs=argparse.REMAINDER, help="arguments of the recipe (see its --help)")
    parser.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> None:
    importlib.import_module(f"mosaic_vlm.training.{args.recipe}").main(args.recipe_args)


def add_bench_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="run the side-by-side benchmarks and write the report",
        description="Run every benchmark against its transformers reference in one run; write JSON, a "
        "markdown table and a PNG bar chart of the speed ratios into --output.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--output", "-o", type=Path, default=Path("bench-report"), help="report folder")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (a smoke run)")
    parser.set_defaults(handler=run_bench)


def run_bench(args: argparse.Namespace) -> None:
    from mosaic_vlm.bench.report import write_report

    paths = write_report(args.output, quick=args.quick)
    for path in paths:
        print(path)


def add_demo_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="the main job: train tiny models on real images offline and report",
        description="Train, evaluate, search and reload tiny models on images that ship in wheels; write a "
        "report with pictures into --output-dir.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--output-dir", type=Path, default=Path("demo-output"), help="where models, report and PNGs go")
    parser.add_argument("--quick", action="store_true", help="every stage, with tiny amounts (a smoke run)")
    parser.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> None:
    from mosaic_vlm.demo.main_job import main

    main(["--output-dir", str(args.output_dir), *(["--quick"] if args.quick else [])])
