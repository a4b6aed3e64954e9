"""Train V*'s two tiny Fuyu-style models of the V*Bench-like set with Trainer, as SEAL has two:
- `--task answer`: names the targets a question needs, and answers digit, colour and left/right questions
  directly or from V*'s visual working memory; it starts (`--init_from`) from a `--task digits` stage
  that only reads digits from the working memory (trained on everything at once, it never learns to);
- `--task search`: answers "Is there a red digit in the image?" about crops of every size a search
  visits; `FuyuScorer` turns it into the search's scorer.
Evaluation during training: held-out answer accuracy (teacher-forced, equal to greedy decoding).

    mosaic-vlm train vstar --task digits --output_dir out/vstar-digits --max_steps 1500 --train_rows 48000
    mosaic-vlm train vstar --task answer --init_from out/vstar-digits --output_dir out/vstar --max_steps 2000 \
        --train_rows 64000
    mosaic-vlm train vstar --task search --output_dir out/vstar-search --max_steps 6000 --train_rows 192000

(`python -m mosaic_vlm.recipes.vstar ...` runs the same; in Python, `run(VStarArguments(...),
TrainingArguments(...))`. The launcher of both models at once in background processes, `start_training`, runs a
`TrainingPlan` (`FULL_PLAN`, `QUICK_PLAN`) with `LAUNCH_SETTINGS`: batches of 32, learning rate 3e-3; its
processes end with the process that started them, even when that one is killed.)

The rows come from `mosaic_vlm.data.vstar_scenes` (skimage photos, sklearn digits); every
TrainingArguments flag works (see --help).
"""

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from transformers import (
    AutoModelForCausalLM,
    AutoProcessor,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from mosaic_vlm.data.vstar_scenes import TASKS, tokenizer_texts, training_rows
from mosaic_vlm.modeling import MosaicFuyuForCausalLM
from mosaic_vlm.processing import MosaicFuyuImageProcessor, MosaicFuyuProcessor, train_bpe_tokenizer
from mosaic_vlm.processing.collators import MosaicFuyuCollator
from mosaic_vlm.processing.fuyu_special_tokens import FUYU_SPECIAL_TOKENS

from .fuyu import answer_accuracy, build_model, greedy_predictions
from .recipe import child_command, parse_arguments, prepare_run, run_recipe


@dataclasses.dataclass
class VStarArguments:
    task: str = dataclasses.field(
        default="answer",
        metadata={
            "help": "which rows: 'answer', 'digits' (the answering model's first stage) or 'search'",
            "choices": TASKS,
        },
    )
    init_from: str | None = dataclasses.field(
        default=None,
        metadata={"help": "start from this saved model (e.g. the 'digits' stage) instead of random weights"},
    )
    hidden_size: int = dataclasses.field(default=64, metadata={"help": "width of the decoder"})
    num_hidden_layers: int = dataclasses.field(default=3, metadata={"help": "decoder layers"})
    num_attention_heads: int = dataclasses.field(default=4, metadata={"help": "attention heads"})
    # a 4x4 grid of coarse patches: a tiny decoder learns to read it far faster than 8x8 finer ones
    image_size: int = dataclasses.field(
        default=48, metadata={"help": "the model's input: images are fitted into this square"}
    )
    patch_size: int = dataclasses.field(default=12, metadata={"help": "side of a square patch"})
    train_rows: int = dataclasses.field(default=64000, metadata={"help": "generated training rows"})
    eval_rows: int = dataclasses.field(default=600, metadata={"help": "generated held-out rows (another seed)"})
    progress_file: str | None = dataclasses.field(
        default=None,
        metadata={"help": "keep 'steps done, steps in all' in this file while training (for a launcher to watch)"},
    )


def build_processor(image_size: int, patch_size: int) -> MosaicFuyuProcessor:
    tokenizer = train_bpe_tokenizer(
        tokenizer_texts(), vocab_size=512, model_max_length=512, extra_special_tokens=list(FUYU_SPECIAL_TOKENS)
    )
    image_processor = MosaicFuyuImageProcessor(patch_size=patch_size, size={"height": image_size, "width": image_size})
    return MosaicFuyuProcessor(image_processor=image_processor, tokenizer=tokenizer)


class ProgressFile(TrainerCallback):
    """Writes "steps done, steps in all" to a file every few steps, for a launcher in another process to watch."""

    def __init__(self, path: str, every: int = 10):
        self.path, self.every = Path(path), every

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            written = self.path.with_suffix(".writing")
            written.write_text(f"{state.global_step} {state.max_steps}")
            written.replace(self.path)  # whole, so that a reader never sees a half-written file


def build_trainer(args: VStarArguments, training_args: TrainingArguments) -> Trainer:
    prepare_run(training_args)
    # the rows come in runs of one batch with the same number of images (little padding), the runs in random
    # order: read in order, each batch keeps its run
    training_args.train_sampling_strategy = "sequential"
    processor = build_processor(args.image_size, args.patch_size)
    size = (args.image_size, args.image_size)
    if args.init_from:
        model = MosaicFuyuForCausalLM.from_pretrained(args.init_from)
        if model.config.vocab_size != len(processor.tokenizer):
            raise ValueError(
                f"--init_from {args.init_from} has {model.config.vocab_size} tokens; these rows' tokenizer has "
                f"{len(processor.tokenizer)} (start from a model trained by this script)."
            )
    else:
        model = build_model(args, processor.tokenizer)
    return Trainer(
        model=model,
        args=training_args,
        train_dataset=training_rows(
            args.train_rows, training_args.seed, size, args.task, training_args.per_device_train_batch_size
        ),
        eval_dataset=training_rows(args.eval_rows, training_args.seed + 1_000_000, size, args.task),
        data_collator=MosaicFuyuCollator(processor, image_column="images"),
        processing_class=processor,
        compute_metrics=answer_accuracy,
        preprocess_logits_for_metrics=greedy_predictions,
        callbacks=[ProgressFile(args.progress_file)] if args.progress_file else None,
    )


@dataclasses.dataclass(frozen=True)
class TrainingPlan:
    """What `start_training` trains: the steps of each stage (`digits`, `answer`, `search`), the model arguments
    every stage starts from (`start_training` sets each stage's task, init_from, train_rows and progress_file)
    and the warmup steps."""

    steps: Mapping[str, int]
    model: VStarArguments = dataclasses.field(default_factory=VStarArguments)
    warmup_steps: int = 50


# A full run: the recipe's defaults. A smoke run: tiny models and a few steps; its answering model takes enough
# steps to name targets (so that the demo searches).
FULL_PLAN = TrainingPlan(steps=MappingProxyType({"digits": 1500, "answer": 2000, "search": 6000}))
QUICK_PLAN = TrainingPlan(
    steps=MappingProxyType({"digits": 10, "answer": 200, "search": 20}),
    model=VStarArguments(hidden_size=32, num_hidden_layers=1, eval_rows=8),
    warmup_steps=2,
)
# The Trainer's settings in both models' processes, beside the plan's warmup
LAUNCH_SETTINGS = {
    "per_device_train_batch_size": 32,
    "learning_rate": 3e-3,
    "eval_strategy": "no",
    "save_strategy": "no",
    "report_to": "none",
    "logging_steps": 500,
}


class BackgroundTraining:
    """V*'s two models training at once (`start_training`), each in its own process: the answering model's
    stages (`digits`, then `answer` from it) one after the other, the search model beside them. A thread per model
    starts its stages' processes and waits for them; the processes end with this one, however it ends (killed
    too: `child_command`), and `stop` (or leaving a `with` block) ends them early."""

    def __init__(self, stages: dict[str, list[tuple[str, Path, int]]], commands: dict, environment, log_dir):
        self.stages, self.log_dir = stages, log_dir
        self._lock = threading.Lock()
        self._stopped = False
        self._processes: dict[str, subprocess.Popen] = {}
        self._codes: dict[str, int] = {}
        self._started = {model: threading.Event() for model in stages}
        self._threads = {
            model: threading.Thread(
                target=self._run, args=(model, commands[model], environment), name=f"vstar-{model}", daemon=True
            )
            for model in stages
        }
        for thread in self._threads.values():
            thread.start()
        for started in self._started.values():  # each model's first process runs (or could not start) by now
            started.wait()

    def _run(self, model: str, commands: list[tuple[list[str], Path | None]], environment) -> None:
        code = 0
        try:
            for command, log in commands:
                code = -1  # until this stage's process has ended (a Popen that raises leaves it)
                with self._lock:
                    if self._stopped:
                        code = -signal.SIGTERM
                        break
                    with open(log, "w") if log else contextlib.nullcontext() as output:
                        stream = {"stdout": output, "stderr": subprocess.STDOUT} if log else {}
                        process = subprocess.Popen(command, env=environment, **stream)
                    self._processes[model] = process
                self._started[model].set()
                code = process.wait()  # this thread started the process: it must live as long (PR_SET_PDEATHSIG)
                if code != 0:
                    break
        finally:
            self._codes[model] = code
            self._started[model].set()

    def __enter__(self) -> "BackgroundTraining":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def stop(self) -> None:
        """End the training processes still running (SIGTERM, then SIGKILL after 10 s) and start no more."""
        with self._lock:
            self._stopped = True
            running = [process for process in self._processes.values() if process.poll() is None]
        for process in running:
            process.terminate()
        for process in running:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        for thread in self._threads.values():
            thread.join()

    def pids(self) -> list[int]:
        """The process ids of the training processes running now."""
        with self._lock:
            return [process.pid for process in self._processes.values() if process.poll() is None]

    def progress(self) -> dict[str, float]:
        """The share of its training steps each model has done, 0 to 1 (read from the stages' progress files)."""
        shares = {}
        for model, stages in self.stages.items():
            files = [folder / "progress" for _, folder, _ in stages]
            done = sum(int(file.read_text().split()[0]) for file in files if file.exists())
            shares[model] = done / sum(steps for _, _, steps in stages)
        return shares

    def finished(self, model: str) -> bool:
        return not self._threads[model].is_alive()

    def folder(self, model: str) -> Path:
        """Waits for the processes training `model` ("answer" or "search"); returns the folder it was saved in."""
        self._threads[model].join()
        if self._codes.get(model) != 0:
            logs = " and ".join(str(training_log(self.log_dir, task)) for task, _, _ in self.stages[model])
            raise RuntimeError(f"Training the V* {model} model failed" + (f" (see {logs})." if self.log_dir else "."))
        return self.stages[model][-1][1]

    def model(self, model: str):
        """Waits for the processes training `model` ("answer" or "search"); returns its (model, processor)."""
        return load_model(self.folder(model))

    def metrics(self) -> dict[str, dict]:
        """Each finished stage's final_metrics.json (held-out accuracy, CPU seconds), by task."""
        return {
            task: json.loads((folder / "final_metrics.json").read_text())
            for stages in self.stages.values()
            for task, folder, _ in stages
            if (folder / "final_metrics.json").exists()
        }


def start_training(
    output_dir: Path, plan: TrainingPlan = FULL_PLAN, log_dir: Path | None = None
) -> BackgroundTraining:
    """Starts this recipe (Trainer) for both models at once, each in its own process with one thread (these
    tiny models make poor use of a second thread, and full use of a second process), into output_dir/vstar
    (after output_dir/vstar-digits) and output_dir/vstar-search, as `plan` says: `plan.steps[task]` steps each
    with one fresh row per step and batch row, and `LAUNCH_SETTINGS`. With `log_dir`, each stage writes to its log
    there (`training_log`) instead of the terminal, without progress bars. The processes end with this one (use
    the result in a `with` block to end them when the block fails)."""
    stages = {
        "answer": [
            ("digits", output_dir / "vstar-digits", plan.steps["digits"]),
            ("answer", output_dir / "vstar", plan.steps["answer"]),
        ],
        "search": [("search", output_dir / "vstar-search", plan.steps["search"])],
    }
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    batch_size = LAUNCH_SETTINGS["per_device_train_batch_size"]
    commands = {}
    for model, model_stages in stages.items():
        commands[model] = []
        for (task, folder, task_steps), previous in zip(model_stages, [None, *model_stages]):
            folder.mkdir(parents=True, exist_ok=True)
            model_args = dataclasses.replace(
                plan.model,
                task=task,
                init_from=str(previous[1]) if previous else None,
                train_rows=batch_size * task_steps,
                progress_file=str(folder / "progress"),
            )
            training_settings = {
                **LAUNCH_SETTINGS,
                "warmup_steps": plan.warmup_steps,
                "output_dir": folder,
                "max_steps": task_steps,
                "disable_tqdm": log_dir is not None or task == "search",
            }
            # the stage's process reads its dataclasses back from this command line (`main`)
            settings = {**dataclasses.asdict(model_args), **training_settings}
            arguments = [f"--{name}={value}" for name, value in settings.items() if value is not None]
            log = training_log(log_dir, task) if log_dir else None
            commands[model].append((child_command("mosaic_vlm.recipes.vstar", arguments), log))
    return BackgroundTraining(stages, commands, environment, log_dir)


def training_log(log_dir: Path, task: str) -> Path:
    """The log file of `start_training`'s `task` stage in `log_dir`."""
    return log_dir / f"vstar-{task}.log"


def load_model(folder: Path):
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)


def summary(args: VStarArguments, trainer: Trainer, metrics: dict) -> str:
    return (
        f"V* {args.task} model: held-out answer accuracy {metrics['eval_answer_accuracy']:.1%} over "
        f"{len(trainer.eval_dataset)} rows"
    )


def run(args: VStarArguments, training_args: TrainingArguments) -> dict:
    """Train, evaluate and save (and push with `push_to_hub`) one model as `mosaic-vlm train vstar` does; returns
    the metrics (also written to final_metrics.json beside the model)."""
    return run_recipe(build_trainer, args, training_args, summary)


def parse(argv: list[str] | None = None, prog: str | None = None) -> tuple[VStarArguments, TrainingArguments]:
    """`argv` (sys.argv when None) as this recipe's two dataclasses, as `main` reads it (no abbreviated flags, each
    flag once); `prog` names the command in usage and errors."""
    return parse_arguments(VStarArguments, argv, __doc__, prog)


def main(argv: list[str] | None = None) -> dict:
    """`mosaic-vlm train vstar ARGS`: `argv` (sys.argv when None) parsed into the two dataclasses, then `run`."""
    return run(*parse(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
