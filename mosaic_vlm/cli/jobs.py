"""`train`, `bench` and `demo`: the package's recipes, benchmarks and main job."""

import argparse
import importlib
from pathlib import Path

from .staging import require_writable_output, staged_folder


def add_train_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="run a Trainer recipe (clip, fuyu or vstar) on the bundled digits and scenes",
        description="Run the Trainer recipe mosaic_vlm.recipes.<recipe>; everything after the recipe name goes to "
        "its own parser (HfArgumentParser: every TrainingArguments flag works; see `mosaic-vlm train RECIPE --help`). "
        "The run writes into a staging folder beside --output_dir, which takes --output_dir's place when training "
        "ends; a failed or killed run leaves no partial folder (and its checkpoints go with it).",
        epilog="example:\n  mosaic-vlm train clip --output_dir out/clip --num_train_epochs 20 --learning_rate 2e-3",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --output_dir if it is a non-empty folder")
    parser.add_argument(
        "recipe", choices=("clip", "fuyu", "vstar"), help="which recipe: clip, fuyu, or V*'s models (vstar)"
    )
    parser.add_argument("recipe_args", nargs=argparse.REMAINDER, help="arguments of the recipe (see its --help)")
    parser.set_defaults(handler=run_train)


OUTPUT_DIR_FLAGS = ("--output_dir", "--output-dir")


def output_dir_argument(arguments: list[str]) -> tuple[int, Path] | None:
    """Where the recipe arguments name the output folder: (index of its value, the folder), or None."""
    for index, argument in enumerate(arguments):
        flag, equals, value = argument.partition("=")
        if flag in OUTPUT_DIR_FLAGS:
            if equals:
                return index, Path(value)
            if index + 1 < len(arguments):
                return index + 1, Path(arguments[index + 1])
    return None


def run_train(args: argparse.Namespace) -> None:
    recipe = importlib.import_module(f"mosaic_vlm.recipes.{args.recipe}")
    found = output_dir_argument(args.recipe_args)
    if found is None or "-h" in args.recipe_args or "--help" in args.recipe_args:
        recipe.main(args.recipe_args)  # its own parser explains a missing --output_dir, or prints --help
        return
    index, output = found
    checkpoints = [
        Path(value)
        for flag, value in zip(args.recipe_args, args.recipe_args[1:])
        if flag == "--resume_from_checkpoint"
    ]
    require_writable_output(output, args.overwrite, inputs=checkpoints, flag="--output_dir")
    with staged_folder(output) as staging:
        arguments = list(args.recipe_args)
        arguments[index] = (
            arguments[index].partition("=")[0] + f"={staging}" if "=" in arguments[index] else str(staging)
        )
        recipe.main(arguments)
    print(f"saved: {output}")


def add_bench_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="run the side-by-side benchmarks and write the report",
        description="Run every benchmark against its transformers reference in one run; write JSON, a "
        "markdown table and a PNG bar chart of the speed ratios into --output. V*'s two models are trained first "
        "(the Trainer recipe vstar) into --output/vstar-models; nothing is left behind outside --output.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--output", "-o", type=Path, default=Path("bench-report"), help="report folder")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (a smoke run)")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it is a non-empty folder")
    parser.set_defaults(handler=run_bench)


def run_bench(args: argparse.Namespace) -> None:
    from mosaic_vlm.benchmarks.report import write_report
    from mosaic_vlm.recipes.vstar import FULL_PLAN, QUICK_PLAN, start_training

    require_writable_output(args.output, args.overwrite)
    with staged_folder(args.output) as staging:
        # trained before the benchmarks run, so that their timings have the machine to themselves
        training = start_training(staging / "vstar-models", QUICK_PLAN if args.quick else FULL_PLAN)
        models = training.folder("answer"), training.folder("search")
        names = [path.name for path in write_report(staging, quick=args.quick, vstar_models=models)]
    for name in names:
        print(args.output / name)


def add_demo_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="the main job: train tiny models on real images offline and report",
        description="Train, evaluate, search and reload tiny models on images that ship in wheels; write a "
        "report with pictures into --output-dir.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--output-dir", type=Path, default=Path("demo-output"), help="where models, report and PNGs go"
    )
    parser.add_argument("--quick", action="store_true", help="every stage, with tiny amounts (a smoke run)")
    parser.add_argument("--overwrite", action="store_true", help="replace --output-dir if it is a non-empty folder")
    parser.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> None:
    from mosaic_vlm.demo.main_job import run_main_job

    require_writable_output(args.output_dir, args.overwrite, flag="--output-dir")
    with staged_folder(args.output_dir) as staging:
        minutes = run_main_job(staging, quick=args.quick)
    output = args.output_dir.resolve()
    print(f"\nreport: {output / 'report.md'}\nsearch pictures: {output / 'traces'}\ndone in {minutes:.1f} min")
