"""Trainer recipes on real digits, shortened: training, evaluation, saving, resume and bad data."""

import json
import os
import subprocess
import sys

import pytest
import torch
from processes import alive, wait_until_gone
from transformers import AutoModel, AutoModelForCausalLM, TrainerCallback, TrainingArguments

from mosaic_vlm.data.digits import digit_caption_dataset, digit_question_dataset
from mosaic_vlm.processing.collators import MosaicClipCollator, MosaicFuyuCollator
from mosaic_vlm.recipes import clip as train_clip
from mosaic_vlm.recipes import fuyu as train_fuyu
from mosaic_vlm.recipes.recipe import parse_arguments

QUICK_FUYU = [
    "--per_device_train_batch_size",
    "32",
    "--learning_rate",
    "3e-3",
    "--warmup_steps",
    "20",
    "--report_to",
    "none",
    "--logging_steps",
    "1000",
    "--disable_tqdm",
    "true",
]
QUICK_CLIP = [
    "--per_device_train_batch_size",
    "64",
    "--learning_rate",
    "2e-3",
    "--warmup_steps",
    "5",
    "--report_to",
    "none",
    "--logging_steps",
    "1000",
    "--disable_tqdm",
    "true",
]


@pytest.mark.slow
def test_clip_recipe_trains_evaluates_and_saves(tmp_path):
    metrics = train_clip.main(
        [
            "--output_dir",
            str(tmp_path),
            "--num_train_epochs",
            "6",
            "--eval_strategy",
            "epoch",
            "--save_strategy",
            "no",
            *QUICK_CLIP,
        ]
    )
    # 10 classes: chance is 10%; a shortened run already classifies most held-out digits zero-shot
    assert metrics["eval_zero_shot_accuracy"] > 0.5
    assert "eval_loss" in metrics
    reloaded = AutoModel.from_pretrained(tmp_path)
    assert type(reloaded).__name__ == "MosaicClipModel"
    assert os.path.isfile(tmp_path / "processor_config.json")


@pytest.mark.slow
def test_fuyu_recipe_learns_to_answer_and_saves(tmp_path):
    metrics = train_fuyu.main(
        [
            "--output_dir",
            str(tmp_path),
            "--num_train_epochs",
            "4",
            "--eval_strategy",
            "epoch",
            "--save_strategy",
            "no",
            *QUICK_FUYU,
        ]
    )
    # 10 possible answers; after 4 of the full run's epochs most held-out digits are already answered right
    assert metrics["eval_answer_accuracy"] > 0.8
    # teacher-forced accuracy (used during training) is what greedy generation gets
    assert metrics["generated_accuracy"] == pytest.approx(metrics["eval_answer_accuracy"])
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(reloaded).__name__ == "MosaicFuyuForCausalLM"
    assert os.path.isfile(tmp_path / "processor_config.json")


def test_a_recipe_runs_from_dataclasses_as_from_its_command_line(tmp_path, capsys):
    """Python callers hand `run` the two dataclasses; `main` parses argv into the same two, then runs."""
    model_args = train_clip.ModelArguments(hidden_size=32, num_hidden_layers=1, max_train_samples=64)
    training_args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=2,
        per_device_train_batch_size=32,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
    )
    metrics = train_clip.run(model_args, training_args)
    assert "held-out digits" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "final_metrics.json").read_text()) == metrics
    assert type(AutoModel.from_pretrained(tmp_path / "run")).__name__ == "MosaicClipModel"
    argv = ["--hidden_size", "32", "--num_hidden_layers", "1", "--max_train_samples", "64", "--output_dir", "out"]
    parsed_model_args, parsed_training_args = parse_arguments(train_clip.ModelArguments, argv, "")
    assert parsed_model_args == model_args and parsed_training_args.output_dir == "out"


def test_fuyu_collator_masks_all_but_the_answer_and_refuses_bad_rows():
    processor = train_fuyu.build_processor(32, 8)
    data = digit_question_dataset()["test"].select(range(6))
    collator = MosaicFuyuCollator(processor)
    collator.validate(data)
    batch = collator([data[i] for i in range(3)])
    for row in range(3):
        labelled = batch["labels"][row][batch["labels"][row] != -100].tolist()
        answer = processor.tokenizer(data[row]["answer"], add_special_tokens=False)["input_ids"]
        assert labelled == [*answer, processor.tokenizer.eos_token_id]
    assert batch["pixel_values"].shape == (3, 16, 8 * 8 * 3)
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['answer'\]"):
        collator.validate(data.remove_columns("answer"))
    too_long = data.map(lambda row: {"answer": " ".join(["seven"] * 200)})
    with pytest.raises(ValueError, match="Row 0 takes .* tokens .* more than the tokenizer's model_max_length=128"):
        collator.validate(too_long)


class KillAfterSave(TrainerCallback):
    """Simulates a crash right after the checkpoint at `step` is written."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_resume_from_checkpoint_is_bit_exact(tmp_path):
    def trainer_for(output_dir):
        model_args = train_clip.ModelArguments(max_train_samples=192)
        training_args = TrainingArguments(
            output_dir=str(output_dir),
            max_steps=6,
            save_steps=3,
            save_strategy="steps",
            eval_strategy="no",
            per_device_train_batch_size=32,
            learning_rate=2e-3,
            report_to="none",
            disable_tqdm=True,
        )
        return train_clip.build_trainer(model_args, training_args)

    uninterrupted = trainer_for(tmp_path / "straight")
    uninterrupted.train()
    interrupted = trainer_for(tmp_path / "resumed")
    interrupted.add_callback(KillAfterSave(3))
    with pytest.raises(KeyboardInterrupt):
        interrupted.train()
    resumed = trainer_for(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-3"))
    expected = uninterrupted.model.state_dict()
    for name, tensor in resumed.model.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_bad_data_fails_before_training(tokenizer, clip_processor):
    from datasets import Dataset, Features, Image, Value

    data = digit_caption_dataset()["test"].select(range(8))
    collator = MosaicClipCollator(clip_processor)
    collator.validate(data)
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['caption'\]"):
        collator.validate(data.remove_columns("caption"))
    rows = {"image": [None, *data["image"][1:]], "caption": list(data["caption"])}
    no_image = Dataset.from_dict(rows, features=Features({"image": Image(), "caption": Value("string")}))
    with pytest.raises(ValueError, match="Row 0 of the dataset has no image"):
        collator.validate(no_image)
    broken = no_image.cast_column("image", Image(decode=False))
    broken = Dataset.from_dict(
        {"image": [{"bytes": b"not a png", "path": None}], "caption": ["a photo"]},
        features=Features({"image": Image(decode=False), "caption": Value("string")}),
    ).cast_column("image", Image())
    with pytest.raises(ValueError, match="Row 0 of the dataset has an unreadable image"):
        collator.validate(broken)


def test_too_long_captions_are_truncated_with_a_warning(clip_processor, caplog):
    data = digit_caption_dataset()["test"].select(range(4))
    long_caption = " ".join(["a photo of the digit seven"] * 20)
    data = data.map(lambda row: {"caption": long_caption})
    collator = MosaicClipCollator(clip_processor)
    with caplog.at_level("WARNING"):
        collator.validate(data)
    assert "4 of 4 texts in column 'caption' are longer than 24 tokens" in caplog.text
    batch = collator([data[i] for i in range(4)])
    assert batch["input_ids"].shape[1] == 24 and batch["return_loss"] is True


# Two CPU processes under accelerate launch: its multi-process launcher (MULTI_GPU) with use_cpu, as
# examples/accelerate_two_cpu.yaml (accelerate starts only one process for MULTI_CPU + --cpu here).
ACCELERATE_TWO_CPU = """\
compute_environment: LOCAL_MACHINE
distributed_type: MULTI_GPU
num_processes: 2
num_machines: 1
machine_rank: 0
mixed_precision: 'no'
use_cpu: true
rdzv_backend: static
same_network: true
main_process_ip: 127.0.0.1
main_process_port: 29533
"""


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_ranks_run_the_clip_recipe(tmp_path, launcher):
    if launcher == "torchrun":
        command = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    else:
        (tmp_path / "accelerate.yaml").write_text(ACCELERATE_TWO_CPU)
        command = ["-m", "accelerate.commands.launch", "--config_file", str(tmp_path / "accelerate.yaml")]
    result = subprocess.run(
        [
            sys.executable,
            *command,
            "-m",
            "mosaic_vlm.recipes.clip",
            "--output_dir",
            str(tmp_path / "out"),
            "--max_steps",
            "4",
            "--save_strategy",
            "no",
            "--eval_strategy",
            "no",
            "--ddp_backend",
            "gloo",
            *QUICK_CLIP,
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "held-out digits" in result.stdout and "(2 processes)" in result.stdout
    assert os.path.isfile(tmp_path / "out" / "model.safetensors")


def test_fuyu_gradient_accumulation_equals_the_large_batch(tmp_path):
    """One optimizer step over 4 samples: batch 4 equals 2 micro-batches of 2 (Trainer passes
    num_items_in_batch, so unequal answer lengths are weighted per token, not per micro-batch)."""
    from tiny import tiny_fuyu_config, varied_batch
    from transformers import Trainer, default_data_collator

    from mosaic_vlm.modeling import MosaicFuyuForCausalLM

    inputs = varied_batch(4)
    labels = torch.full_like(inputs["input_ids"], -100)
    for row, answer_length in enumerate((3, 1, 2, 4)):
        labels[row, -answer_length:] = inputs["input_ids"][row, -answer_length:]
    rows = [{**{name: value[row] for name, value in inputs.items()}, "labels": labels[row]} for row in range(4)]

    def one_step(batch_size, accumulation):
        torch.manual_seed(0)
        model = MosaicFuyuForCausalLM._from_config(tiny_fuyu_config(), attn_implementation="eager")
        args = TrainingArguments(
            output_dir=str(tmp_path / f"b{batch_size}"),
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            max_steps=1,
            learning_rate=0.1,
            optim="sgd",
            lr_scheduler_type="constant",
            report_to=[],
            save_strategy="no",
            logging_steps=1,
            disable_tqdm=True,
            remove_unused_columns=False,
            dataloader_pin_memory=False,
        )
        trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=default_data_collator)
        loss = trainer.train().training_loss
        return loss, model.state_dict()

    large_loss, large = one_step(4, 1)
    small_loss, accumulated = one_step(2, 2)
    assert abs(large_loss - small_loss) < 1e-5
    for name, tensor in large.items():
        torch.testing.assert_close(
            accumulated[name], tensor, atol=1e-6, rtol=1e-5, msg=lambda m, name=name: f"{name}: {m}"
        )


@pytest.mark.slow
def test_two_ranks_run_the_fuyu_recipe(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "mosaic_vlm.recipes.fuyu",
            "--output_dir",
            str(tmp_path),
            "--max_steps",
            "4",
            "--save_strategy",
            "no",
            "--eval_strategy",
            "no",
            "--ddp_backend",
            "gloo",
            *QUICK_FUYU,
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "held-out digits" in result.stdout and "(2 processes)" in result.stdout
    assert os.path.isfile(tmp_path / "model.safetensors")


@pytest.mark.slow
def test_the_cli_trains_into_a_staged_output_folder(tmp_path, capsys):
    from mosaic_vlm.cli.main import main

    output = tmp_path / "fuyu"
    argv = [
        "fuyu",
        "--output_dir",
        str(output),
        "--max_steps",
        "2",
        "--max_train_samples",
        "64",
        "--save_strategy",
        "no",
        "--eval_strategy",
        "no",
        *QUICK_FUYU,
    ]
    assert main(["train", *argv]) == 0
    assert (output / "model.safetensors").is_file() and sorted(os.listdir(tmp_path)) == ["fuyu"]
    assert main(["train", *argv]) == 2  # a second run would replace the first: only with --overwrite
    assert "exists and is not empty; pass --overwrite" in capsys.readouterr().err
    assert main(["train", "--overwrite", *argv]) == 0 and sorted(os.listdir(tmp_path)) == ["fuyu"]


# ------------------------------------------------------------------------------ V*'s background training processes

# starts V*'s two trainings into argv[1], prints their process ids, then waits to be killed
START_AND_WAIT = """
import sys, time
from pathlib import Path
from mosaic_vlm.recipes.vstar import QUICK_PLAN, start_training
training = start_training(Path(sys.argv[1]), QUICK_PLAN, log_dir=Path(sys.argv[1]) / "logs")
print(*training.pids(), flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_background_training_ends_when_the_process_that_started_it_is_killed(tmp_path):
    command = [sys.executable, "-c", START_AND_WAIT, str(tmp_path)]
    starter = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(pid) for pid in starter.stdout.readline().split()]
        assert len(pids) == 2 and all(alive(pid) for pid in pids)
        starter.kill()  # SIGKILL: no cleanup runs in the starter
        starter.wait()
        assert wait_until_gone(pids) == [], "training processes outlived the process that started them"
    finally:
        starter.kill()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_background_training_ends_when_its_block_fails(tmp_path):
    from mosaic_vlm.recipes.vstar import QUICK_PLAN, start_training

    with pytest.raises(RuntimeError, match="a stage failed"):
        with start_training(tmp_path, QUICK_PLAN, log_dir=tmp_path / "logs") as training:
            pids = training.pids()
            assert len(pids) == 2
            raise RuntimeError("a stage failed")
    assert wait_until_gone(pids, seconds=15) == [] and training.pids() == []
    assert training.finished("answer") and training.finished("search")
