"""Run under `torchrun --nproc_per_node 2`: each rank takes its half of one fixed batch, computes the
contrastive loss with features gathered across ranks, and averages gradients as DDP does. Rank 0 saves
the loss and gradients to `<out_dir>/<loss_type>.safetensors`."""

import sys

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from tiny import random_pixels, random_texts, tiny_clip_config

from mosaic_vlm.modeling import MosaicClipModel


def main(out_dir: str, loss_type: str, global_batch: int) -> None:
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = MosaicClipModel._from_config(tiny_clip_config(loss_type=loss_type), attn_implementation="eager")
    input_ids, attention_mask = random_texts(model.config, global_batch)
    pixel_values = random_pixels(model.config, global_batch)
    share = slice(rank * global_batch // world_size, (rank + 1) * global_batch // world_size)
    loss = model(
        input_ids=input_ids[share],
        attention_mask=attention_mask[share],
        pixel_values=pixel_values[share],
        return_loss=True,
    ).loss
    loss.backward()
    gradients = {}
    for name, parameter in model.named_parameters():
        dist.all_reduce(parameter.grad)  # DDP's gradient averaging
        gradients[name] = parameter.grad / world_size
    if rank == 0:
        save_file({"loss": loss.detach(), **gradients}, f"{out_dir}/{loss_type}.safetensors")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
