"""Train V*'s two tiny Fuyu-style models of the V*Bench-like set with Trainer, as SEAL has two:
- `--task answer`: names the targets a question needs, and answers digit, colour and left/right questions
  directly or from V*'s visual working memory; it starts (`--init_from`) from a `--task digits` stage
  that only reads digits from the working memory (trained on everything at once, it never learns to);
- `--task search`: answers "Is there a red digit in the image?" about crops of every size a search
  visits; `FuyuScorer` turns it into the search's scorer.
Evaluation during training: held-out answer accuracy (teacher-forced, equal to greedy decoding).

    mosaic-vlm train vstar --task digits --output_dir out/vstar-digits --max_steps 1000
    mosaic-vlm train vstar --task answer --init_from out/vstar-digits --output_dir out/vstar --max_steps 3000
    mosaic-vlm train vstar --task search --output_dir out/vstar-search --max_steps 6000

(`python -m mosaic_vlm.training.vstar ...` runs the same.)

The rows come from `mosaic_vlm.data.vstar_scenes` (skimage photos, sklearn digits); every
TrainingArguments flag works (see --help).
"""

import dataclasses
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoProcessor, HfArgumentParser, Trainer, TrainingArguments

from mosaic_vlm.data.collators import MosaicFuyuCollator
from mosaic_vlm.data.vstar_scenes import TASKS, tokenizer_texts, training_rows
from mosaic_vlm.modeling import MosaicFuyuForCausalLM
from mosaic_vlm.processing import MosaicFuyuImageProcessor, MosaicFuyuProcessor, train_bpe_tokenizer
from mosaic_vlm.processing.fuyu_special_tokens import FUYU_SPECIAL_TOKENS

from .fuyu import answer_accuracy, build_model, greedy_predictions


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


def build_processor(image_size: int, patch_size: int) -> MosaicFuyuProcessor:
    tokenizer = train_bpe_tokenizer(
        tokenizer_texts() * 4, vocab_size=512, model_max_length=512, extra_special_tokens=list(FUYU_SPECIAL_TOKENS)
    )
    image_processor = MosaicFuyuImageProcessor(patch_size=patch_size, size={"height": image_size, "width": image_size})
    return MosaicFuyuProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build_trainer(args: VStarArguments, training_args: TrainingArguments) -> Trainer:
    training_args.remove_unused_columns = False
    training_args.dataloader_pin_memory = False
    torch.manual_seed(training_args.seed)
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
        train_dataset=training_rows(args.train_rows, training_args.seed, size, args.task),
        eval_dataset=training_rows(args.eval_rows, training_args.seed + 1_000_000, size, args.task),
        data_collator=MosaicFuyuCollator(processor, image_column="images"),
        processing_class=processor,
        compute_metrics=answer_accuracy,
        preprocess_logits_for_metrics=greedy_predictions,
    )


# Steps of each stage of a full run and of a smoke run, and the model flags of each (a full run: the defaults)
TRAIN_STEPS = {"digits": 1000, "answer": 3000, "search": 6000}
QUICK_STEPS = {"digits": 10, "answer": 20, "search": 20}
FULL_MODEL = []
QUICK_MODEL = ["--hidden_size", "32", "--num_hidden_layers", "1", "--eval_rows", "8"]


def start_training(output_dir: Path, steps: dict, model_args: list[str] = FULL_MODEL, log: bool = False):
    """Starts this recipe (Trainer) for both models at once, each in its own process with one
    thread (these tiny models make poor use of a second thread, and full use of a second process), into
    output_dir/vstar and output_dir/vstar-search. The answering model trains in two stages, one after the
    other: `digits` (into output_dir/vstar-digits), then `answer` from it. With `log`, each stage writes
    to train.log in its folder instead of the terminal, without progress bars. Returns a function that
    waits for both models and returns the two (model, processor) pairs."""
    stages = {
        "answer": [
            ("digits", output_dir / "vstar-digits", []),
            ("answer", output_dir / "vstar", ["--init_from", str(output_dir / "vstar-digits")]),
        ],
        "search": [("search", output_dir / "vstar-search", [])],
    }
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    commands = []
    for model, model_stages in stages.items():
        script = []
        for task, folder, extra in model_stages:
            folder.mkdir(parents=True, exist_ok=True)
            command = [
                sys.executable,
                "-m",
                "mosaic_vlm.training.vstar",
                *model_args,
                *extra,
                "--task",
                task,
                "--output_dir",
                str(folder),
                "--max_steps",
                str(steps[task]),
                "--train_rows",
                str(32 * steps[task]),
                "--per_device_train_batch_size",
                "32",
                "--learning_rate",
                "3e-3",
                "--warmup_steps",
                "50",
                "--eval_strategy",
                "no",
                "--save_strategy",
                "no",
                "--report_to",
                "none",
                "--logging_steps",
                "1000",
                "--disable_tqdm",
                "true" if log or task == "search" else "false",
            ]
            redirect = f" > {shlex.quote(str(folder / 'train.log'))} 2>&1" if log else ""
            script.append(shlex.join(command) + redirect)
        commands.append((model, subprocess.Popen(["/bin/sh", "-c", " && ".join(script)], env=environment)))

    def finish():
        failed = [model for model, process in commands if process.wait() != 0]
        if failed:
            logs = f" (see the train.log files in {output_dir})" if log else ""
            raise RuntimeError(f"Training the V* {' and '.join(failed)} model failed{logs}.")
        return load_model(output_dir / "vstar"), load_model(output_dir / "vstar-search")

    return finish


def load_model(folder: Path):
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)


def main(argv=None) -> dict:
    parser = HfArgumentParser((VStarArguments, TrainingArguments), description=__doc__)
    args, training_args = parser.parse_args_into_dataclasses(args=argv)
    trainer = build_trainer(args, training_args)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = trainer.evaluate()
    trainer.save_model(training_args.output_dir)
    if trainer.is_world_process_zero():
        with open(os.path.join(training_args.output_dir, "final_metrics.json"), "w") as file:
            json.dump(metrics, file, indent=2)
        print(
            f"V* {args.task} model: held-out answer accuracy {metrics['eval_answer_accuracy']:.1%} over "
            f"{len(trainer.eval_dataset)} rows"
        )
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
