"""`train`, `bench` and `demo`: the package's recipes, benchmarks and main job."""

import argparse
import importlib
from pathlib import Path

from .hub import push_folder
from .staging import require_writable_output, staged_folder
from .vstar import add_bench_vstar_command

BENCH_OUTPUT = Path("bench-report")


def add_train_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="run a Trainer recipe (clip, fuyu or vstar) on the bundled digits and scenes",
        description="Run the Trainer recipe mosaic_vlm.recipes.<recipe>; everything after the recipe name goes to "
        "its own parser (HfArgumentParser: every TrainingArguments flag works, written out in full and once each; "
        "see `mosaic-vlm train RECIPE --help`). The run writes into a staging folder beside --output_dir, which "
        "takes --output_dir's place when training ends; a failed or killed run leaves no partial folder (and its "
        "checkpoints go with it). --output_dir may not be, hold or lie inside --resume_from_checkpoint or "
        "--init_from. With --push_to_hub the saved folder is pushed once it is in place (to --hub_model_id, by "
        "default the output folder's name); a failed push keeps the model and says how to push it again.",
        epilog="example:\n  mosaic-vlm train clip --output_dir out/clip --num_train_epochs 20 --learning_rate 2e-3",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --output_dir if it is a non-empty folder")
    parser.add_argument(
        "recipe", choices=("clip", "fuyu", "vstar"), help="which recipe: clip, fuyu, or V*'s models (vstar)"
    )
    parser.add_argument("recipe_args", nargs=argparse.REMAINDER, help="arguments of the recipe (see its --help)")
    parser.set_defaults(handler=run_train, needs_demo_extra=True)


OUTPUT_DIR_FLAGS = ("--output_dir", "--output-dir")


def names_output_dir(arguments: list[str]) -> bool:
    """Whether the recipe arguments name the output folder (the recipe parser takes flags whole, never
    abbreviated, so this is every way of naming it)."""
    return any(argument.partition("=")[0] in OUTPUT_DIR_FLAGS for argument in arguments)


def run_train(args: argparse.Namespace) -> None:
    from mosaic_vlm.recipes.recipe import INPUT_PATH_FIELDS

    recipe = importlib.import_module(f"mosaic_vlm.recipes.{args.recipe}")
    arguments = [argument for argument in args.recipe_args if argument != "--overwrite"]
    overwrite = args.overwrite or len(arguments) < len(args.recipe_args)  # --overwrite after the recipe works too
    prog = f"mosaic-vlm train {args.recipe}"
    if "-h" in arguments or "--help" in arguments:
        recipe.parse(arguments, prog)  # prints the recipe's help and exits
        return
    if not names_output_dir(arguments):
        raise ValueError(f"train {args.recipe} needs --output_dir FOLDER (where the trained model goes).")
    # parsed first, whole: every path is read as the recipe will read it, whatever its spelling
    model_args, training_args = recipe.parse(arguments, prog)
    output = Path(training_args.output_dir)
    inputs = [
        (f"--{field}", path)
        for field in INPUT_PATH_FIELDS
        for path in [getattr(model_args, field, None) or getattr(training_args, field, None)]
        if path
    ]
    require_writable_output(output, overwrite, inputs=inputs, flag="--output_dir")
    # the push runs once the model is in place (a failed push loses nothing), under the output folder's name
    push, training_args.push_to_hub = training_args.push_to_hub, False
    repo_id = training_args.hub_model_id or output.resolve().name
    with staged_folder(output, overwrite=overwrite, flag="--output_dir") as staging:
        training_args.output_dir = str(staging)
        recipe.run(model_args, training_args)
    print(f"saved: {output}")
    if push:
        push_trained(output, repo_id, training_args)


def push_trained(output: Path, repo_id: str, training_args) -> None:
    """`mosaic-vlm push OUTPUT REPO` with the run's hub settings; a failure is one error that says the model is
    kept and how to push it again."""
    try:
        pushed = push_folder(
            output,
            repo_id,
            revision=training_args.hub_revision,
            private=bool(training_args.hub_private_repo),
            token=training_args.hub_token,
        )
    except (ValueError, OSError) as error:
        raise OSError(
            f"{error}. The trained model is kept in {output}; push it again with: mosaic-vlm push {output} {repo_id}"
            + (f" --revision {training_args.hub_revision}" if training_args.hub_revision else "")
        ) from error
    print(f"pushed: {pushed}")


def add_bench_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="run the side-by-side benchmarks and write the report",
        description="Run every benchmark against its transformers reference in one run; write JSON, a "
        "markdown table and a PNG bar chart of the speed ratios into --output. V*'s two models are trained first "
        "(the Trainer recipe vstar) into --output/vstar-models; the conversion memory benchmark works in a scratch "
        "folder under --output: nothing is written outside --output. `bench vstar` evaluates the V*Bench release "
        "instead (see `mosaic-vlm bench vstar --help`).",
        epilog="examples:\n  mosaic-vlm bench --output bench-report\n"
        "  mosaic-vlm bench vstar --bench-dir vstar_bench --model my-llava --scorer clip:my-clip",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--output", "-o", type=Path, default=None, help=f"report folder (default {BENCH_OUTPUT})")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (a smoke run)")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it is a non-empty folder")
    parser.set_defaults(handler=run_bench, needs_demo_extra=True)
    add_bench_vstar_command(parser.add_subparsers(dest="suite", metavar="suite", required=False))


def run_bench(args: argparse.Namespace) -> None:
    from mosaic_vlm.benchmarks.report import write_report
    from mosaic_vlm.recipes.vstar import FULL_PLAN, QUICK_PLAN, start_training

    output = args.output or BENCH_OUTPUT
    require_writable_output(output, args.overwrite)
    with staged_folder(output, overwrite=args.overwrite) as staging:
        # trained before the benchmarks run, so that their timings have the machine to themselves; the training
        # processes end with this one
        with start_training(staging / "vstar-models", QUICK_PLAN if args.quick else FULL_PLAN) as training:
            models = training.folder("answer"), training.folder("search")
        names = [path.name for path in write_report(staging, quick=args.quick, vstar_models=models)]
    for name in names:
        print(output / name)


def add_demo_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="the main job: train tiny models on real images offline and report",
        description="Train, evaluate, search and reload tiny models on images that ship in wheels; write a "
        "report with pictures into --output-dir. V*'s background training processes end with the demo, however "
        "it ends.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--output-dir", type=Path, default=Path("demo-output"), help="where models, report and PNGs go"
    )
    parser.add_argument("--quick", action="store_true", help="every stage, with tiny amounts (a smoke run)")
    parser.add_argument("--overwrite", action="store_true", help="replace --output-dir if it is a non-empty folder")
    parser.set_defaults(handler=run_demo, needs_demo_extra=True)


def run_demo(args: argparse.Namespace) -> None:
    from mosaic_vlm.demo.main_job import run_main_job

    require_writable_output(args.output_dir, args.overwrite, flag="--output-dir")
    with staged_folder(args.output_dir, overwrite=args.overwrite, flag="--output-dir") as staging:
        minutes = run_main_job(staging, quick=args.quick)
    output = args.output_dir.resolve()
    print(f"\nreport: {output / 'report.md'}\nsearch pictures: {output / 'traces'}\ndone in {minutes:.1f} min")
