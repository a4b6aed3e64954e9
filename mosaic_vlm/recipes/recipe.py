"""What every recipe does around its own data and model: the Trainer settings they all need, the command line's
arguments read into dataclasses, and the run once the Trainer is built (train, evaluate, save, report, push)."""

import json
import os
import time
from collections.abc import Callable

import torch
from transformers import HfArgumentParser, Trainer, TrainingArguments


def prepare_run(training_args: TrainingArguments) -> None:
    """Trainer settings every recipe needs, then the seed (before the model is made): every column reaches the
    collator (it reads the images), and no memory is pinned (the recipes run on CPU too)."""
    training_args.remove_unused_columns = False
    training_args.dataloader_pin_memory = False
    torch.manual_seed(training_args.seed)


def parse_arguments(arguments_class, argv: list[str] | None, description: str) -> tuple[object, TrainingArguments]:
    """The command line's arguments (`argv`, or sys.argv when None) as the recipe's `arguments_class` and
    TrainingArguments: the one place a recipe reads argv."""
    parser = HfArgumentParser((arguments_class, TrainingArguments), description=description)
    return tuple(parser.parse_args_into_dataclasses(args=argv))


def run_recipe(
    build_trainer: Callable[..., Trainer],
    args,
    training_args: TrainingArguments,
    summary: Callable[[object, Trainer, dict], str],
    extra_metrics: Callable[[Trainer], dict] | None = None,
) -> dict:
    """Builds the Trainer with `build_trainer(args, training_args)`, trains (from
    `training_args.resume_from_checkpoint` when given), evaluates and saves the model. On the main process it adds
    `extra_metrics(trainer)`, writes final_metrics.json beside the model (with this process's CPU seconds:
    `setup_cpu_seconds` to build the Trainer and its data, `cpu_seconds` in all) and prints
    `summary(args, trainer, metrics)` with the number of processes. With `push_to_hub` it pushes. Returns the
    metrics."""
    trainer = build_trainer(args, training_args)
    setup_cpu_seconds = time.process_time()
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = trainer.evaluate()
    metrics.update(setup_cpu_seconds=setup_cpu_seconds, cpu_seconds=time.process_time())
    trainer.save_model(training_args.output_dir)
    if trainer.is_world_process_zero():
        if extra_metrics is not None:
            metrics.update(extra_metrics(trainer))
        with open(os.path.join(training_args.output_dir, "final_metrics.json"), "w") as file:
            json.dump(metrics, file, indent=2)
        fsdp = ", FSDP" if trainer.is_fsdp_enabled else ""
        print(f"{summary(args, trainer, metrics)} ({trainer.args.world_size} processes{fsdp})")
    if training_args.push_to_hub:
        trainer.push_to_hub()
    return metrics
