"""Run under torchrun: each rank takes its slice of the vocabulary (rows of the weight) from
INPUTS and saves the fused loss and its gradients to OUT_DIR/rank<r>.pt."""
import sys

import torch
import torch.distributed as dist

from accessory.model import cross_entropy


def main(inputs_path: str, out_dir: str, chunk_elements: int) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    cross_entropy.CHUNK_ELEMENTS = chunk_elements
    inputs = torch.load(inputs_path, weights_only=True)
    hidden = inputs["hidden"].clone().requires_grad_()
    weight = inputs["weight"].chunk(world)[rank].clone().requires_grad_()
    loss = cross_entropy.linear_cross_entropy_sum(hidden, weight, inputs["targets"], dist.group.WORLD)
    (loss * 0.5).backward()
    torch.save({"loss": loss.detach(), "grad_hidden": hidden.grad, "grad_weight": weight.grad}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
