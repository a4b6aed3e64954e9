"""accelerate at scale: loading in bf16, placing layers with device_map and max_memory, offloading to disk, and
training both recipes' models as a 2-rank FSDP job on CPU (gloo) through `accelerate launch`."""

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from tiny import tiny_clip_config
from transformers import AutoModel, AutoModelForCausalLM

from mosaic_vlm.modeling import MosaicClipModel, MosaicFuyuConfig, MosaicFuyuForCausalLM


def tiny_fuyu() -> MosaicFuyuForCausalLM:
    config = MosaicFuyuConfig(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        image_token_id=1, image_newline_token_id=2, patch_size=8, bos_token_id=3, eos_token_id=4, pad_token_id=0,
    )  # fmt: skip
    return MosaicFuyuForCausalLM(config)


def fuyu_inputs() -> dict:
    generator = torch.Generator().manual_seed(0)
    layout = [1, 1, 2, 1, 1, 2]  # a 2x2-patch image: image tokens, an image-newline per row
    input_ids = torch.tensor([layout + [3] + torch.randint(5, 300, (6,), generator=generator).tolist()])
    return {"input_ids": input_ids, "pixel_values": torch.randn(1, 4, 3 * 8 * 8, generator=generator)}


def clip_inputs(config) -> dict:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, config.text_config.vocab_size - 1, (3, 12), generator=generator)
    input_ids[:, -1] = config.text_config.eos_token_id
    size = config.vision_config.image_size
    return {"input_ids": input_ids, "pixel_values": torch.randn(3, 3, size, size, generator=generator)}


FAMILIES = {
    "fuyu": (tiny_fuyu, AutoModelForCausalLM, lambda model: fuyu_inputs(), "logits"),
    "clip": (lambda: MosaicClipModel(tiny_clip_config()), AutoModel, lambda model: clip_inputs(model.config),
             "logits_per_image"),
}  # fmt: skip


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def saved(request, tmp_path_factory):
    build, auto_class, inputs, output_name = FAMILIES[request.param]
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp(request.param)
    build().save_pretrained(folder)
    plain = auto_class.from_pretrained(folder).eval()
    return request.param, folder, auto_class, inputs(plain), output_name, plain


def test_device_map_with_max_memory_and_disk_offload_gives_the_plain_outputs(saved, tmp_path):
    family, folder, auto_class, inputs, output_name, plain = saved
    budget = sum(p.numel() * p.element_size() for p in plain.parameters()) // 3  # a third of the weights fit
    offloaded = auto_class.from_pretrained(
        folder, device_map="auto", max_memory={"cpu": budget}, offload_folder=tmp_path / "offload"
    ).eval()
    placements = set(offloaded.hf_device_map.values())
    assert placements == {"cpu", "disk"}, offloaded.hf_device_map  # split by layers, not one block
    with torch.no_grad():
        assert torch.equal(plain(**inputs)[output_name], offloaded(**inputs)[output_name])
    if family == "fuyu":
        settings = {"max_new_tokens": 5, "min_new_tokens": 5, "do_sample": False}
        assert torch.equal(plain.generate(**inputs, **settings), offloaded.generate(**inputs, **settings))


def test_loading_in_bf16_gives_the_plain_outputs_within_bf16_precision(saved):
    family, folder, auto_class, inputs, output_name, plain = saved
    model = auto_class.from_pretrained(folder, dtype=torch.bfloat16).eval()
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        torch.testing.assert_close(
            model(**inputs)[output_name].float(), plain(**inputs)[output_name], atol=0.05, rtol=0.05
        )
    if family == "fuyu":
        settings = {"max_new_tokens": 5, "min_new_tokens": 5, "do_sample": False}
        assert torch.equal(model.generate(**inputs, **settings), plain.generate(**inputs, **settings))


def fsdp_and_ddp_worker(rank: int, family: str, port: int, folder: str) -> None:
    """One of two ranks: the same model trained 3 SGD steps on this rank's batches, once sharded with torch's
    FSDP2 (`fully_shard` per transformer layer, then the root) and once replicated with DDP; rank 0 saves both."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    build, _, inputs, output_name = FAMILIES[family]
    torch.manual_seed(0)
    sharded, replicated = build(), build()
    replicated.load_state_dict(sharded.state_dict())
    layers = [module for name, module in sharded.named_modules() if name.rsplit(".", 2)[-2:-1] == ["layers"]]
    mesh = init_device_mesh("cpu", (2,))
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    # FSDP2 cannot shard a scalar parameter (CLIP's logit_scale, a scalar in transformers' CLIP and OpenAI's too):
    # it stays replicated, and its gradient is averaged over the ranks by hand, as DDP does
    scalars = {parameter for parameter in sharded.parameters() if parameter.ndim == 0}
    fully_shard(sharded, mesh=mesh, ignored_params=scalars)
    replicated = DistributedDataParallel(replicated)
    batch = inputs(replicated.module)
    generator = torch.Generator().manual_seed(rank)  # each rank its own data
    batch = {name: value + 0.1 * torch.randn(value.shape, generator=generator) if value.is_floating_point() else value
             for name, value in batch.items()}  # fmt: skip
    for model in (sharded, replicated):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(3):
            output = model(**batch, **({"labels": batch["input_ids"]} if family == "fuyu" else {"return_loss": True}))
            output.loss.backward()
            if model is sharded:
                for scalar in scalars:
                    dist.all_reduce(scalar.grad, op=dist.ReduceOp.AVG)
            optimizer.step()
            optimizer.zero_grad()
    full = get_model_state_dict(sharded, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        replicated.module.save_pretrained(f"{folder}/ddp")
        replicated.module.save_pretrained(f"{folder}/fsdp", state_dict=full)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fsdp2_shards_both_families_on_cpu_and_matches_ddp(family, tmp_path):
    import torch.multiprocessing as multiprocessing

    from mosaic_vlm.cli.inputs import load_folder_strictly

    port = 29600 + len(family)
    multiprocessing.spawn(fsdp_and_ddp_worker, args=(family, port, str(tmp_path)), nprocs=2)
    sharded, replicated = (
        load_file(tmp_path / "fsdp" / "model.safetensors"),
        load_file(tmp_path / "ddp" / "model.safetensors"),
    )
    assert sorted(sharded) == sorted(replicated)
    for name, tensor in replicated.items():  # the same 3 steps on the same data, sharded or replicated
        torch.testing.assert_close(
            sharded[name], tensor, atol=2e-5, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}"
        )
    _, auto_class, _, _ = FAMILIES[family]
    model = auto_class.from_pretrained(tmp_path / "fsdp")
    config_class = type(model.config)
    strict = load_folder_strictly(tmp_path / "fsdp", config_class, type(model))  # every key, no random weights
    assert all(torch.equal(strict.state_dict()[name], tensor) for name, tensor in sharded.items())


# `accelerate launch` with an FSDP config does not shard on CPU: accelerate 1.15 turns FSDP on only for accelerator
# device types (AcceleratorState, accelerate/state.py: MULTI_GPU, MULTI_NPU, MULTI_XPU, ...; never MULTI_CPU), so
# such a job runs as plain DDP (trainer.is_fsdp_enabled is False). This test holds that, so that the README's
# claim changes when accelerate does.
FSDP_TWO_CPU = """\
compute_environment: LOCAL_MACHINE
distributed_type: FSDP
num_processes: 2
num_machines: 1
machine_rank: 0
mixed_precision: 'no'
use_cpu: true
rdzv_backend: static
same_network: true
main_process_ip: 127.0.0.1
main_process_port: 29542
fsdp_config:
  fsdp_version: 2
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_state_dict_type: FULL_STATE_DICT
"""


@pytest.mark.slow
def test_accelerate_launch_with_fsdp_on_cpu_runs_unsharded(tmp_path):
    config = tmp_path / "fsdp.yaml"
    config.write_text(FSDP_TWO_CPU)
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "-m",
         "mosaic_vlm.recipes.fuyu", "--output_dir", str(tmp_path / "out"), "--max_steps", "2", "--max_train_samples",
         "64", "--per_device_train_batch_size", "16", "--save_strategy", "no", "--eval_strategy", "no",
         "--report_to", "none", "--ddp_backend", "gloo", "--disable_tqdm", "true"],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(2 processes)" in result.stdout and "FSDP" not in result.stdout
