"""What every recipe does around its own data and model: the Trainer settings they all need, the command line's
arguments read into dataclasses, the run once the Trainer is built (train, evaluate, save, report, push), and
child processes that end with the process that starts them."""

import dataclasses
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable

import torch
from transformers import HfArgumentParser, Trainer, TrainingArguments


def prepare_run(training_args: TrainingArguments) -> None:
    """Trainer settings every recipe needs, then the seed (before the model is made): every column reaches the
    collator (it reads the images), and no memory is pinned (the recipes run on CPU too)."""
    training_args.remove_unused_columns = False
    training_args.dataloader_pin_memory = False
    torch.manual_seed(training_args.seed)


# the fields that name what a run reads (the command line's output may not be, hold or lie inside one), and all
# the fields that name a file or folder: each of these may be given once
INPUT_PATH_FIELDS = ("resume_from_checkpoint", "init_from")
PATH_FIELDS = ("output_dir", *INPUT_PATH_FIELDS, "progress_file")


def option_names(*dataclass_types) -> dict[str, str]:
    """Every flag the recipe parser makes for these dataclasses (`--name`, `--name-with-dashes`, and `--no_name`
    for a switch that defaults to true) -> its field's name."""
    names = {}
    for dataclass_type in dataclass_types:
        for field in dataclasses.fields(dataclass_type):
            if not field.init:
                continue
            spellings = {field.name, field.name.replace("_", "-")}
            if field.default is True:
                spellings |= {f"no_{field.name}", f"no-{field.name.replace('_', '-')}"}
            names.update({f"--{spelling}": field.name for spelling in spellings})
    return names


def given_options(argv: list[str], *dataclass_types) -> Counter:
    """How many times `argv` gives each field of these dataclasses (`--flag value` or `--flag=value`; the recipe
    parser takes no abbreviation, so every flag it reads is one of `option_names`)."""
    names = option_names(*dataclass_types)
    counts = Counter()
    for token in argv:
        if token == "--":
            break
        flag = token.partition("=")[0]
        if flag in names:
            counts[names[flag]] += 1
    return counts


def parse_arguments(
    arguments_class, argv: list[str] | None, description: str, prog: str | None = None
) -> tuple[object, TrainingArguments]:
    """The command line's arguments (`argv`, or sys.argv when None) as the recipe's `arguments_class` and
    TrainingArguments: the one place a recipe reads argv. Flags are taken whole (no abbreviation: `--output_d` is an
    error, not `--output_dir`), a flag naming a file or folder (PATH_FIELDS) at most once; no `.args` file beside the
    program is read. `prog` names the command in usage and errors (default: the program's name)."""
    parser = HfArgumentParser(
        (arguments_class, TrainingArguments), prog=prog, description=description, allow_abbrev=False
    )
    argv = sys.argv[1:] if argv is None else list(argv)
    counts = given_options(argv, arguments_class, TrainingArguments)
    repeated = sorted(name for name, count in counts.items() if count > 1 and name in PATH_FIELDS)
    if repeated:
        parser.error(f"argument --{repeated[0]}: given more than once; name each file or folder once")
    return tuple(parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False))


# Runs in a child process before anything is imported (`child_command`): the child dies with the thread that
# started it. On Linux the kernel sends it SIGKILL when that thread ends, however it ends (prctl PR_SET_PDEATHSIG);
# elsewhere a watchdog thread checks the parent every second. Then the module runs as __main__.
_CHILD_BOOTSTRAP = """\
import os, runpy, signal, sys, threading, time
parent, module = int(sys.argv.pop(1)), sys.argv.pop(1)
if sys.platform.startswith("linux"):
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
else:
    def watch():
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()
if os.getppid() != parent:  # the parent ended before the signal was set
    os._exit(1)
sys.argv[0] = module
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def child_command(module: str, arguments: list[str]) -> list[str]:
    """The command line of `python -m module arguments` in a child process that ends when this process ends, even
    by SIGKILL (on Linux, when the thread that starts it ends: start it from a thread that waits for it)."""
    return [sys.executable, "-c", _CHILD_BOOTSTRAP, str(os.getpid()), module, *arguments]


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
    `summary(args, trainer, metrics)` with the number of processes. With `push_to_hub` it pushes, after the model is
    saved (a failed push leaves it in output_dir). Returns the metrics."""
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
