"""What the main job shows on the terminal: one progress bar per stage, saying what the stage is doing and how
long it has left, and a few result lines; everything else (Trainer's logs, library warnings and loading bars)
goes to the stage's log file. Each stage also keeps its wall and CPU time for the report."""

import logging
import os
import time
from pathlib import Path

import transformers
from tqdm.auto import tqdm
from transformers import PrinterCallback, TrainerCallback

BAR_FORMAT = "{desc} |{bar}| {percentage:3.0f}% [{elapsed}<{remaining}]{postfix}"
logger = logging.getLogger("mosaic_vlm.demo")
logger.propagate = False  # to the stage's log file only
logger.setLevel(logging.INFO)


class Stage:
    """One stage of the main job, as a context manager: a header line, one bar of `total` units of work (more
    can be added with `grow`), and a log file that takes what libraries would print meanwhile."""

    def __init__(self, number: int, stages: int, title: str, log_file: Path, total: float, initial: float = 0):
        self.number, self.stages, self.title, self.log_file = number, stages, title, log_file
        self.total, self.initial = total, initial
        self.wall_seconds = self.cpu_seconds = self.load_average = 0.0

    def __enter__(self):
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.handler = logging.FileHandler(self.log_file, mode="a")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        transformers.utils.logging.disable_default_handler()
        transformers.utils.logging.add_handler(self.handler)
        transformers.utils.logging.disable_progress_bar()
        logging.captureWarnings(True)  # library warnings go through the "py.warnings" logger, to the file
        for name in ("py.warnings", logger.name):
            logging.getLogger(name).addHandler(self.handler)
        logging.getLogger("py.warnings").propagate = False
        print(f"\n== {self.number}. {self.title}   (log: {self.log_file.parent.name}/{self.log_file.name})")
        self.bar = tqdm(
            total=self.total,
            initial=self.initial,
            desc=f"{self.number}/{self.stages}",
            bar_format=BAR_FORMAT,
            dynamic_ncols=True,
        )
        self.started_wall, self.started_cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc_info) -> None:
        self.wall_seconds = time.perf_counter() - self.started_wall
        self.cpu_seconds = time.process_time() - self.started_cpu
        self.load_average = os.getloadavg()[0]
        self.bar.close()
        for name in ("py.warnings", logger.name):
            logging.getLogger(name).removeHandler(self.handler)
        logging.captureWarnings(False)
        transformers.utils.logging.enable_progress_bar()
        transformers.utils.logging.remove_handler(self.handler)
        transformers.utils.logging.enable_default_handler()
        self.handler.close()

    def doing(self, what: str) -> None:
        """Says what the stage is doing now, beside the bar."""
        self.bar.set_postfix_str(what)

    def advance(self, what: str | None = None, units: float = 1) -> None:
        """`units` of work done; `what` says what comes next."""
        if what is not None:
            self.bar.set_postfix_str(what, refresh=False)
        self.bar.update(units)

    def grow(self, units: int) -> None:
        """Adds units of work that turned out to be needed (Trainer's step count is known once it starts)."""
        self.bar.total += units
        self.bar.refresh()

    def say(self, line: str) -> None:
        """A result line on the terminal (above the bar) and in the log."""
        self.bar.write(f"  {line}")
        logger.info(line)

    def trainer_callback(self, what: str) -> TrainerCallback:
        """A callback that moves the bar with each training step and writes Trainer's logs to the log file."""
        return _StageCallback(self, what)

    def quiet(self, trainer) -> None:
        """Trainer without its printed log dicts: its logs go to this stage's file through `trainer_callback`."""
        trainer.remove_callback(PrinterCallback)


class _StageCallback(TrainerCallback):
    def __init__(self, stage: Stage, what: str):
        self.stage, self.what = stage, what

    def on_train_begin(self, args, state, control, **kwargs):
        self.stage.grow(state.max_steps)
        self.stage.doing(f"{self.what}, step 0 of {state.max_steps}")

    def on_step_end(self, args, state, control, **kwargs):
        self.stage.advance(f"{self.what}, step {state.global_step} of {state.max_steps}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        logger.info("step %d: %s", state.global_step, logs)
