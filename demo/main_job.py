"""The main job, offline, on real images that ship in wheels (sklearn digits, scikit-image photos):

1. train the CLIP-style model with Trainer on captioned digits (plus crops of four photos); report the
   held-out zero-shot accuracy and the zero-shot pipeline's ranking for the photos;
2. train the Fuyu-style model with Trainer to answer "What digit is this?"; report held-out accuracy
   and a few answers;
3. train V*'s two models (answering, search) with Trainer, in two background processes from the start,
   and run the V*Bench-like set: direct vs V* accuracy, search success, scorer calls against an
   exhaustive scan; save PNG pictures of a few searches;
4. save both digit models and reload them with AutoModel / AutoProcessor: the outputs are unchanged;
5. write report.md and the PNGs into --output-dir.

    mosaic-vlm demo [--output-dir demo-output] [--quick] [--overwrite]     (./dev demo in a checkout)
"""

import json
import os
import time
from pathlib import Path

import PIL.Image
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoProcessor, HfArgumentParser, TrainingArguments, pipeline

from mosaic_vlm.bench import vstar as bench_vstar
from mosaic_vlm.data.digits import PHOTO_CAPTIONS
from mosaic_vlm.training import clip as train_clip
from mosaic_vlm.training import fuyu as train_fuyu
from mosaic_vlm.training import vstar as train_vstar

# full run / --quick run (every stage still runs; only the amounts shrink)
SETTINGS = {
    "full": {
        "clip_epochs": "20",
        "photo_crops": "60",
        "fuyu_epochs": "8",
        "vstar_digit_steps": 1000,
        "vstar_answer_steps": 3000,
        "vstar_search_steps": 6000,
        "questions": 45,
        "exhaustive": 10,
    },
    "quick": {
        "clip_epochs": "1",
        "photo_crops": "4",
        "fuyu_epochs": "1",
        "vstar_digit_steps": 10,
        "vstar_answer_steps": 20,
        "vstar_search_steps": 20,
        "questions": 3,
        "exhaustive": 1,
    },
}
COMMON = ["--report_to", "none", "--save_strategy", "no", "--logging_steps", "200", "--seed", "0"]


def trainer_of(module, arguments_class, argv):
    model_args, training_args = HfArgumentParser((arguments_class, TrainingArguments)).parse_args_into_dataclasses(
        args=argv
    )
    return module.build_trainer(model_args, training_args)


def stage_clip(settings, output: Path) -> tuple[list[str], object]:
    print("\n== 1. CLIP-style model on captioned digits and photo crops (Trainer)")
    trainer = trainer_of(
        train_clip,
        train_clip.ModelArguments,
        [
            "--output_dir",
            str(output / "clip"),
            "--num_train_epochs",
            settings["clip_epochs"],
            "--photo_crops",
            settings["photo_crops"],
            "--per_device_train_batch_size",
            "64",
            "--learning_rate",
            "2e-3",
            "--warmup_steps",
            "20",
            "--eval_strategy",
            "no",
            *COMMON,
        ],
    )
    trainer.train()
    accuracy = trainer.evaluate()["eval_zero_shot_accuracy"]
    trainer.save_model(str(output / "clip"))
    print(f"zero-shot accuracy on {len(trainer.eval_dataset)} held-out digits: {accuracy:.1%}")
    classifier = pipeline("zero-shot-image-classification", model=str(output / "clip"))
    from skimage import data

    lines = [
        f"- zero-shot accuracy on {len(trainer.eval_dataset)} held-out digits: **{accuracy:.1%}**",
        "",
        "| photo | 1st label | score | 2nd label | score |",
        "|---|---|---:|---|---:|",
    ]
    for name in PHOTO_CAPTIONS:
        ranked = classifier(
            PIL.Image.fromarray(getattr(data, name)()),
            candidate_labels=list(PHOTO_CAPTIONS.values()),
            hypothesis_template="{}",
        )
        print(f"  {name:10s} " + "  ".join(f"{r['score']:.2f} {r['label']}" for r in ranked[:2]))
        lines.append(
            f"| {name} | {ranked[0]['label']} | {ranked[0]['score']:.2f} | "
            f"{ranked[1]['label']} | {ranked[1]['score']:.2f} |"
        )
    return lines, trainer


def stage_fuyu(settings, output: Path) -> tuple[list[str], object]:
    print("\n== 2. Fuyu-style model answers 'What digit is this?' (Trainer)")
    trainer = trainer_of(
        train_fuyu,
        train_fuyu.ModelArguments,
        [
            "--output_dir",
            str(output / "fuyu"),
            "--num_train_epochs",
            settings["fuyu_epochs"],
            "--per_device_train_batch_size",
            "32",
            "--learning_rate",
            "3e-3",
            "--warmup_steps",
            "20",
            "--eval_strategy",
            "no",
            *COMMON,
        ],
    )
    trainer.train()
    trainer.save_model(str(output / "fuyu"))
    test_set, processor = trainer.eval_dataset, trainer.processing_class
    accuracy = train_fuyu.generated_accuracy(trainer.model, processor, test_set)
    print(f"answered right on {accuracy:.1%} of {len(test_set)} held-out digits")
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
        print(f"  a {expected}: {answer!r}")
        lines.append(f"| {expected} | {answer} |")
    return lines, trainer


def start_vstar_training(settings, output: Path):
    """V*'s two models train in the background (two processes) while stages 1 and 2 run."""
    quick = settings is SETTINGS["quick"]
    steps = {
        "digits": settings["vstar_digit_steps"],
        "answer": settings["vstar_answer_steps"],
        "search": settings["vstar_search_steps"],
    }
    print(
        f"V*'s two models start training in the background: logs in train.log of {output / 'vstar-digits'} "
        f"and then {output / 'vstar'}, and of {output / 'vstar-search'}"
    )
    return train_vstar.start_training(
        output, steps, train_vstar.QUICK_MODEL if quick else train_vstar.FULL_MODEL, log=True
    )


def stage_vstar(settings, output: Path, finish_training) -> list[str]:
    print("\n== 3. V* guided visual search on the V*Bench-like set (two models, Trainer)")
    print("waiting for the background training ...")
    answerer, searcher = finish_training()
    trained = []
    for name in ("vstar", "vstar-search"):
        accuracy = json.loads((output / name / "final_metrics.json").read_text())["eval_answer_accuracy"]
        print(f"  {name}: held-out answer accuracy {accuracy:.1%}")
        trained.append(f"{name} {accuracy:.1%}")
    quick = settings is SETTINGS["quick"]
    result = bench_vstar.run_vstar_benchmark(
        answerer, searcher, settings["questions"], settings["exhaustive"], output / "traces", quick=quick
    )
    bench_vstar.print_result(result)
    scan = result["exhaustive"]
    lines = [
        f"- held-out answer accuracy (teacher-forced) of the two models: {', '.join(trained)}",
        f"- {result['questions']} questions (skimage photos of 1024+ px, digit tiles of ~3% of the short side): "
        f"direct **{result['direct_accuracy']:.1%}**, V* **{result['vstar_accuracy']:.1%}**",
        "",
        "| kind | questions | direct | V* |",
        "|---|---:|---:|---:|",
        *(
            f"| {kind} | {f['questions']} | {f['direct_accuracy']:.1%} | {f['vstar_accuracy']:.1%} |"
            for kind, f in result["by_kind"].items()
        ),
        "",
        f"- targets named right: {result['targets_named']:.1%}; "
        f"search success (IoU > 0.5): {result['search_success']:.1%}",
        f"- scorer calls per search: {result['calls_per_search']:.1f} "
        f"({result['evaluations_per_search']:.0f} crops scored)",
        f"- against an exhaustive scan on {scan['searches']} searches: V* {scan['vstar_calls_per_search']:.0f} calls "
        f"({scan['vstar_crops_per_search']:.0f} crops), hit rate {scan['vstar_hit_rate']:.0%}; scan "
        f"{scan['scan_calls_per_search']:.0f} calls ({scan['scan_crops_per_search']:.0f} crops), "
        f"hit rate {scan['scan_hit_rate']:.0%}",
        "",
        *(f"![search]({path.relative_to(output)})" for path in sorted((output / "traces").glob("*.png"))[:4]),
    ]
    return lines


def stage_reload(clip_trainer, fuyu_trainer, output: Path) -> list[str]:
    print("\n== 4. Reload both digit models with AutoModel / AutoProcessor")
    lines = ["| model | Auto class | max abs difference of the outputs |", "|---|---|---:|"]
    for name, trainer, auto_class in (("clip", clip_trainer, AutoModel), ("fuyu", fuyu_trainer, AutoModelForCausalLM)):
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
        print(f"  {name}: {type(reloaded).__name__} via {auto_class.__name__}, max abs difference {difference:.1e}")
        lines.append(f"| {name} | {auto_class.__name__} -> {type(reloaded).__name__} | {difference:.1e} |")
    return lines


def run_main_job(output: Path, quick: bool = False) -> float:
    """Run every stage into the folder `output` (the CLI stages it and renames it into place); returns minutes."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    settings = SETTINGS["quick" if quick else "full"]
    output = output.resolve()
    torch.manual_seed(0)
    start = time.perf_counter()
    finish_vstar_training = start_vstar_training(settings, output)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two more processes train V*'s models meanwhile
    clip_lines, clip_trainer = stage_clip(settings, output)
    fuyu_lines, fuyu_trainer = stage_fuyu(settings, output)
    torch.set_num_threads(threads)
    vstar_lines = stage_vstar(settings, output, finish_vstar_training)
    reload_lines = stage_reload(clip_trainer, fuyu_trainer, output)
    minutes = (time.perf_counter() - start) / 60
    report = [
        "# mosaic-vlm demo",
        "",
        f"{'Quick' if quick else 'Full'} run, {minutes:.1f} min on {os.cpu_count()} cores "
        f"({torch.get_num_threads()} torch threads).",
        "",
        "## 1. CLIP-style zero-shot",
        "",
        *clip_lines,
        "",
        "## 2. Fuyu-style question answering",
        "",
        *fuyu_lines,
        "",
        "## 3. V* guided visual search",
        "",
        *vstar_lines,
        "",
        "## 4. Save and reload",
        "",
        *reload_lines,
        "",
    ]
    (output / "report.md").write_text("\n".join(report))
    return minutes
