import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from tiny import random_pixels, random_texts, tiny_clip_config

from mosaic_vlm.modeling import MosaicClipModel

GLOBAL_BATCH = 6


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("two_ranks")
    tests_dir = os.path.dirname(__file__)
    shared_helpers = os.path.dirname(tests_dir)  # tests/: tiny.py, which the worker imports
    env = {**os.environ, "PYTHONPATH": shared_helpers, "OMP_NUM_THREADS": "1"}
    for loss_type in ("clip", "siglip"):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node",
                "2",
                os.path.join(tests_dir, "distributed_clip_worker.py"),
                str(out_dir),
                loss_type,
                str(GLOBAL_BATCH),
            ],
            env=env,
            check=True,
            capture_output=True,
            timeout=120,
        )
    return {loss_type: load_file(out_dir / f"{loss_type}.safetensors") for loss_type in ("clip", "siglip")}


@pytest.mark.slow
@pytest.mark.parametrize("loss_type", ["clip", "siglip"])
def test_two_ranks_of_batch_b_equal_one_process_of_batch_2b(two_rank_results, loss_type):
    torch.manual_seed(0)
    model = MosaicClipModel._from_config(tiny_clip_config(loss_type=loss_type), attn_implementation="eager")
    input_ids, attention_mask = random_texts(model.config, GLOBAL_BATCH)
    loss = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        pixel_values=random_pixels(model.config, GLOBAL_BATCH),
        return_loss=True,
    ).loss
    loss.backward()
    distributed = two_rank_results[loss_type]
    torch.testing.assert_close(distributed["loss"], loss.detach(), atol=1e-6, rtol=1e-6)
    # fp32 sums in another order (halves, then the all-reduce): differences stay at rounding level
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(
            distributed[name], parameter.grad, atol=1e-5, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}"
        )


def test_a_local_only_loss_would_differ(two_rank_results):
    """The check above can fail: the loss of one rank's half alone is not the global loss."""
    torch.manual_seed(0)
    model = MosaicClipModel._from_config(tiny_clip_config(), attn_implementation="eager")
    input_ids, attention_mask = random_texts(model.config, GLOBAL_BATCH)
    pixel_values = random_pixels(model.config, GLOBAL_BATCH)
    half = slice(0, GLOBAL_BATCH // 2)
    local = model(
        input_ids=input_ids[half],
        attention_mask=attention_mask[half],
        pixel_values=pixel_values[half],
        return_loss=True,
    ).loss
    assert (local.detach() - two_rank_results["clip"]["loss"]).abs() > 1e-3
