"""The main job, offline, on real images that ship in wheels (sklearn digits, scikit-image photos). V*'s two
models start training in two background processes at once, and meanwhile:

1. the CLIP-style model trains with Trainer on captioned digits (plus crops of four photos): held-out zero-shot
   accuracy, and the zero-shot pipeline's ranking for the photos;
2. the Fuyu-style model trains with Trainer to answer "What digit is this?": held-out accuracy, a few answers;
3. V*'s models finish training (answering: a digit-reading stage, then everything; search);
4. the V*Bench-like set: direct vs V* accuracy by question kind, search success, scorer calls against an
   exhaustive scan, and pictures of the first searches;
5. both digit models are saved and reloaded with AutoModel / AutoProcessor: the outputs are unchanged.

The terminal shows one progress bar per stage and the results; each stage's log goes to logs/ in --output-dir,
beside report.md (figures, tables, the accuracy chart and the search pictures) and the models.

    mosaic-vlm demo [--output-dir demo-output] [--quick] [--overwrite]     (./dev demo in a checkout)
"""

import dataclasses
import json
import math
import os
import resource
import time
from pathlib import Path

import PIL.Image
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoProcessor, TrainingArguments, pipeline

from mosaic_vlm.benchmarks import vstar as bench_vstar
from mosaic_vlm.benchmarks.vstar import KIND_NAMES
from mosaic_vlm.data.digits import PHOTO_CAPTIONS
from mosaic_vlm.recipes import clip as train_clip
from mosaic_vlm.recipes import fuyu as train_fuyu
from mosaic_vlm.recipes import vstar as train_vstar

from .progress import Stage


@dataclasses.dataclass(frozen=True)
class Settings:
    """The amounts of a run of the main job: every stage always runs, a quick run (a smoke run) only does less."""

    clip_epochs: int
    photo_crops: int  # captioned crops of each photo beside the digits
    fuyu_epochs: int
    vstar: train_vstar.TrainingPlan  # V*'s two models, trained in the background
    questions: int  # V*Bench-like questions
    exhaustive: int  # of them, those whose searches are also scanned exhaustively
    pictures: int  # of them, those whose searches are drawn
    quick: bool = False  # coarse, bounded V* searches


FULL = Settings(
    clip_epochs=20,
    photo_crops=60,
    fuyu_epochs=8,
    vstar=train_vstar.FULL_PLAN,
    questions=45,
    exhaustive=10,
    pictures=6,
)
QUICK = Settings(
    clip_epochs=1,
    photo_crops=4,
    fuyu_epochs=1,
    vstar=train_vstar.QUICK_PLAN,
    questions=3,
    exhaustive=1,
    pictures=3,
    quick=True,
)
STAGES = 5


def training_arguments(output_dir: Path, **settings) -> TrainingArguments:
    """TrainingArguments of both foreground recipes: no checkpoints, logs to the stage's file (not the terminal),
    and the stage's own `settings`."""
    return TrainingArguments(
        output_dir=str(output_dir),
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_steps=50,
        seed=0,
        disable_tqdm=True,
        **settings,
    )


def train(trainer, stage: Stage, what: str) -> None:
    """Trainer's steps move the stage's bar; its logs go to the stage's log file."""
    stage.quiet(trainer)
    trainer.add_callback(stage.trainer_callback(what))
    trainer.train()


def stage_clip(settings: Settings, output: Path, stage: Stage) -> tuple[list[str], object]:
    stage.doing("making the data set, the tokenizer and the model")
    trainer = train_clip.build_trainer(
        train_clip.ModelArguments(photo_crops=settings.photo_crops),
        training_arguments(
            output / "clip",
            num_train_epochs=settings.clip_epochs,
            per_device_train_batch_size=64,
            learning_rate=2e-3,
            warmup_steps=20,
        ),
    )
    train(trainer, stage, "training")
    stage.doing("zero-shot accuracy on the held-out digits")
    accuracy = trainer.evaluate()["eval_zero_shot_accuracy"]
    stage.advance()
    trainer.save_model(str(output / "clip"))
    stage.say(f"zero-shot accuracy on {len(trainer.eval_dataset)} held-out digits: {accuracy:.1%}")
    classifier = pipeline("zero-shot-image-classification", model=str(output / "clip"))
    from skimage import data

    lines = [
        f"- zero-shot accuracy on {len(trainer.eval_dataset)} held-out digits: **{accuracy:.1%}**",
        "",
        "| photo | 1st label | score | 2nd label | score |",
        "|---|---|---:|---|---:|",
    ]
    for name in PHOTO_CAPTIONS:
        stage.doing(f"ranking labels for the {name} photo")
        ranked = classifier(
            PIL.Image.fromarray(getattr(data, name)()),
            candidate_labels=list(PHOTO_CAPTIONS.values()),
            hypothesis_template="{}",
        )
        stage.advance()
        stage.say(f"{name:10s} " + "  ".join(f"{r['score']:.2f} {r['label']}" for r in ranked[:2]))
        (first, second) = ((r["label"], r["score"]) for r in ranked[:2])
        lines.append(f"| {name} | {first[0]} | {first[1]:.2f} | {second[0]} | {second[1]:.2f} |")
    return lines, trainer


def stage_fuyu(settings: Settings, output: Path, stage: Stage) -> tuple[list[str], object]:
    stage.doing("making the data set, the tokenizer and the model")
    trainer = train_fuyu.build_trainer(
        train_fuyu.ModelArguments(),
        training_arguments(
            output / "fuyu",
            num_train_epochs=settings.fuyu_epochs,
            per_device_train_batch_size=32,
            learning_rate=3e-3,
            warmup_steps=20,
        ),
    )
    train(trainer, stage, "training")
    trainer.save_model(str(output / "fuyu"))
    test_set, processor = trainer.eval_dataset, trainer.processing_class
    stage.doing("answering the held-out digits with generate")
    accuracy = train_fuyu.generated_accuracy(trainer.model, processor, test_set)
    stage.advance()
    stage.say(f"answered right on {accuracy:.1%} of {len(test_set)} held-out digits")
    rows = test_set[:5]
    inputs = processor(images=[[image] for image in rows["image"]], text=rows["question"])
    answers = processor.post_process_image_text_to_text(
        trainer.model.generate(**inputs, max_new_tokens=4, do_sample=False)
    )
    lines = [
        f"- 'What digit is this?' answered right on **{accuracy:.1%}** of {len(test_set)} held-out digits",
        "",
        "| held-out digit | answer |",
        "|---|---|",
    ]
    for expected, answer in zip(rows["answer"], answers):
        lines.append(f"| {expected} | {answer} |")
    stage.say(
        "a few answers: " + ", ".join(f"{expected} -> {answer!r}" for expected, answer in zip(rows["answer"], answers))
    )
    stage.advance()
    return lines, trainer


def stage_vstar_training(training: train_vstar.BackgroundTraining, stage: Stage):
    """Waits for V*'s two models, the bar following the model with the larger share of its steps left."""
    while not all(training.finished(model) for model in ("answer", "search")):
        shares = training.progress()
        stage.advance(
            f"answering model {shares['answer']:.0%} of its steps, search model {shares['search']:.0%}",
            units=100 * min(shares.values()) - stage.bar.n,
        )
        time.sleep(1)
    models = training.model("answer"), training.model("search")
    stage.advance("done", units=100 - stage.bar.n)
    metrics = training.metrics()
    for task in ("answer", "search"):
        stage.say(f"V* {task} model: held-out answer accuracy {metrics[task]['eval_answer_accuracy']:.1%}")
    return models


def stage_vstar_bench(settings: Settings, output: Path, answerer, searcher, stage: Stage) -> list[str]:
    stage.doing("answering the questions directly and with V*")
    traces = output / "traces"
    result = bench_vstar.run_vstar_benchmark(
        answerer,
        searcher,
        settings.questions,
        settings.exhaustive,
        traces,
        quick=settings.quick,
        pictures=settings.pictures,
        progress=stage.advance,
    )
    chart = bench_vstar.accuracy_chart(result, output / "vstar-accuracy.png")
    direct, vstar, kinds = result["direct_accuracy"], result["vstar_accuracy"], result["by_kind"]
    scan = result["exhaustive"]
    by_kind = ", ".join(
        f"{KIND_NAMES[k]} {f['direct_accuracy']:.0%} -> {f['vstar_accuracy']:.0%}" for k, f in kinds.items()
    )
    stage.say(f"{result['questions']} questions: direct {direct:.1%}, V* {vstar:.1%} ({by_kind})")
    calls, success = result["calls_per_search"], result["search_success"]
    searched = (
        f"{calls:.1f} ({result['evaluations_per_search']:.0f} crops scored)"
        if not math.isnan(calls)  # NaN when the answering model named no target to search for
        else "none: the answering model named no target"
    )
    stage.say(f"search success (IoU > 0.5) {success:.1%}, scorer calls per search: {searched}")
    lines = [
        f"- {result['questions']} questions (skimage photos of 1024+ px, digit tiles of ~3% of the short side): "
        f"direct **{direct:.1%}**, V* **{vstar:.1%}**",
        "",
        f'<img src="{chart.name}" align="right" width="420" alt="direct vs V* accuracy by question kind">',
        "",
        "| kind | questions | direct | V* |",
        "|---|---:|---:|---:|",
        *(
            f"| {KIND_NAMES[kind]} | {f['questions']} | {f['direct_accuracy']:.1%} | {f['vstar_accuracy']:.1%} |"
            for kind, f in kinds.items()
        ),
        "",
        f"- targets named right: {result['targets_named']:.1%}; search success (IoU > 0.5): {success:.1%}",
        f"- scorer calls per search: {searched}",
        f"- against an exhaustive scan on {scan['searches']} searches: V* {scan['vstar_calls_per_search']:.0f} "
        f"calls ({scan['vstar_crops_per_search']:.0f} crops), hit rate {scan['vstar_hit_rate']:.0%}; scan "
        f"{scan['scan_calls_per_search']:.0f} calls ({scan['scan_crops_per_search']:.0f} crops), hit rate "
        f"{scan['scan_hit_rate']:.0%}",
        "",
        '<br clear="right">',
        "",
        "### Searches, as pictures",
        "",
        "Each picture: the question and V*'s answer; the patches the search visited (light to dark in visiting "
        "order, a few numbered with their score), its final box (green: it ended confident, red: it did not), "
        "the target's true place (dashed yellow) and, on the right, the crops the answerer was given.",
        "",
    ]
    for path in sorted(traces.glob("*.png")):
        lines += [f"![{path.stem}]({path.relative_to(output)})", ""]
    return lines


def stage_reload(clip_trainer, fuyu_trainer, output: Path, stage: Stage) -> list[str]:
    lines = ["| model | Auto class | max abs difference of the outputs |", "|---|---|---:|"]
    for name, trainer, auto_class in (("clip", clip_trainer, AutoModel), ("fuyu", fuyu_trainer, AutoModelForCausalLM)):
        stage.doing(f"reloading {name}")
        folder = output / name
        rows = trainer.eval_dataset.select(range(4))
        batch = trainer.data_collator([rows[i] for i in range(4)])
        reloaded = auto_class.from_pretrained(folder).eval()
        reloaded_batch = type(trainer.data_collator)(AutoProcessor.from_pretrained(folder))(
            [rows[i] for i in range(4)]
        )
        with torch.no_grad():
            before = trainer.model.eval()(**batch)
            after = reloaded(**reloaded_batch)
        key = "logits_per_image" if name == "clip" else "logits"
        difference = (before[key] - after[key]).abs().max().item()
        stage.advance()
        stage.say(f"{name}: {type(reloaded).__name__} via {auto_class.__name__}, max abs difference {difference:.1e}")
        lines.append(f"| {name} | {auto_class.__name__} -> {type(reloaded).__name__} | {difference:.1e} |")
    return lines


def time_lines(stages: list[Stage], training: train_vstar.BackgroundTraining, timing: dict) -> list[str]:
    """Where the time went: each stage's wall and CPU time, and the background training's CPU time by stage."""
    lines = ["| stage | wall (min) | CPU, this process (min) | load average at its end |", "|---|---:|---:|---:|"]
    lines += [
        f"| {s.number}. {s.title} | {s.wall_seconds / 60:.1f} | {s.cpu_seconds / 60:.1f} | {s.load_average:.1f} |"
        for s in stages
    ]
    metrics = training.metrics()
    lines += [
        "",
        "| V* training, in the background | setting up (rows, model): CPU (min) | in all: CPU (min) |",
        "|---|---:|---:|",
    ]
    lines += [
        f"| {task} | {metrics[task]['setup_cpu_seconds'] / 60:.1f} | {metrics[task]['cpu_seconds'] / 60:.1f} |"
        for task in ("digits", "answer", "search")
    ]
    return [
        f"{timing['wall_minutes']:.1f} min wall, {timing['cpu_minutes']:.1f} CPU-min in all "
        f"({timing['background_cpu_minutes']:.1f} of them in V*'s two training processes) on {os.cpu_count()} cores. "
        "Wall time stretches when other work shares the machine: the load average (runnable processes, 1-min "
        "mean) is in the table; this job alone keeps at most 3 busy.",
        "",
        *lines,
    ]


def run_main_job(output: Path, quick: bool = False) -> float:
    """Run every stage into the folder `output` (the CLI stages it and renames it into place); returns minutes."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    threads = torch.get_num_threads()
    # One thread: V*'s training processes take the other cores, and these tiny models run fastest on one (the
    # V*Bench-like questions took 2.5x the wall time on two).
    torch.set_num_threads(1)
    try:
        return _run_stages(output.resolve(), QUICK if quick else FULL)
    finally:
        torch.set_num_threads(threads)


def _run_stages(output: Path, settings: Settings) -> float:
    logs = output / "logs"
    torch.manual_seed(0)
    start, start_cpu = time.perf_counter(), time.process_time()
    children_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        "V*'s two models train in two background processes from now on (logs: logs/vstar-digits.log, then "
        "logs/vstar-answer.log, and logs/vstar-search.log); the other stages run meanwhile."
    )
    # the training processes end with this process, however it ends; leaving the block early ends them too
    with train_vstar.start_training(output, settings.vstar, log_dir=logs) as training:
        title = "CLIP-style model on captioned digits and photo crops (Trainer)"
        with Stage(1, STAGES, title, logs / "1-clip.log", total=1 + len(PHOTO_CAPTIONS)) as clip_stage:
            clip_lines, clip_trainer = stage_clip(settings, output, clip_stage)
        title = "Fuyu-style model answers 'What digit is this?' (Trainer)"
        with Stage(2, STAGES, title, logs / "2-fuyu.log", total=2) as fuyu_stage:
            fuyu_lines, fuyu_trainer = stage_fuyu(settings, output, fuyu_stage)
        title = "V*'s two models finish training (background processes)"
        done = 100 * min(training.progress().values())
        with Stage(3, STAGES, title, logs / "3-vstar-training.log", total=100, initial=done) as training_stage:
            answerer, searcher = stage_vstar_training(training, training_stage)
        title = "V* guided visual search on the V*Bench-like set"
        items = settings.questions + settings.exhaustive
        with Stage(4, STAGES, title, logs / "4-vstar-bench.log", total=items) as bench_stage:
            vstar_lines = stage_vstar_bench(settings, output, answerer, searcher, bench_stage)
        title = "Save and reload both digit models with AutoModel / AutoProcessor"
        with Stage(5, STAGES, title, logs / "5-reload.log", total=2) as reload_stage:
            reload_lines = stage_reload(clip_trainer, fuyu_trainer, output, reload_stage)

    stages = [clip_stage, fuyu_stage, training_stage, bench_stage, reload_stage]
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    background_cpu = (children.ru_utime + children.ru_stime - children_cpu.ru_utime - children_cpu.ru_stime) / 60
    timing = {
        "wall_minutes": (time.perf_counter() - start) / 60,
        "cpu_minutes": (time.process_time() - start_cpu) / 60 + background_cpu,
        "background_cpu_minutes": background_cpu,
        "stages": {s.title: {"wall_seconds": s.wall_seconds, "cpu_seconds": s.cpu_seconds} for s in stages},
    }
    metrics = training.metrics()
    report = [
        "# mosaic-vlm demo",
        "",
        f"{'Quick' if settings.quick else 'Full'} run: {timing['wall_minutes']:.1f} min wall on {os.cpu_count()} "
        f"cores ({timing['cpu_minutes']:.1f} CPU-min; where the time went is at the end).",
        "",
        "## 1. CLIP-style zero-shot",
        "",
        *clip_lines,
        "",
        "## 2. Fuyu-style question answering",
        "",
        *fuyu_lines,
        "",
        "## 3. V*'s two models",
        "",
        "- held-out answer accuracy (teacher-forced): answering model "
        f"{metrics['answer']['eval_answer_accuracy']:.1%} (after the digit-reading stage: "
        f"{metrics['digits']['eval_answer_accuracy']:.1%}), search model "
        f"{metrics['search']['eval_answer_accuracy']:.1%}",
        "",
        "## 4. V* guided visual search",
        "",
        *vstar_lines,
        "",
        "## 5. Save and reload",
        "",
        *reload_lines,
        "",
        "## Where the time went",
        "",
        *time_lines(stages, training, timing),
        "",
    ]
    (output / "report.md").write_text("\n".join(report))
    (output / "timing.json").write_text(json.dumps(timing, indent=2))
    return timing["wall_minutes"]
