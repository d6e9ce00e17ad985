"""Several processes fitting one detector, on PyTorch's own ``torch.distributed``.

``adcore fit --nproc N`` starts N copies of the same command with torchrun
(``python -m torch.distributed.run``); ``torchrun --nnodes M --nproc-per-node N -m adcore fit ...``
spreads them over machines with the same code. Each process learns its place from the
variables torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``...);
the backend is gloo on CPUs and NCCL on GPUs. What the processes do (see the Engine):

* **Passes** (one-pass models, statistics before training): each process reads a
  contiguous shard of the training images, in order. A detector that can combine shards
  (``AnomalyDetector.supports_sharded_fit``) then merges what they accumulated, in every
  process: sums are all-reduced (PaDiM's Gaussians: the same Gaussian as one process), rows are gathered in rank
  order (PatchCore's and DFM's features: the same rows, in the same order, as one process,
  so the same coreset and the same PCA). Other detectors read all images in every process.
* **Stages** (gradient training): every global batch (``--batch-size``) is split between
  the processes; gradients are averaged over them after each backward pass, which is what
  ``DistributedDataParallel`` does, so the processes keep identical weights.
* Process 0 finishes the fit, calibrates, tests and writes the run; the others stop when
  the last phase has ended.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable, Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


def world_size() -> int:
    """Processes in this fit (1 without torch.distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's place (0: the one that writes the run)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_device(device: torch.device) -> torch.device:
    """A GPU without an index becomes this process's own GPU (``LOCAL_RANK``)."""
    if device.type == "cuda" and device.index is None and launched_by_torchrun():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def initialize(device: torch.device) -> bool:
    """Join the process group torchrun described (once); True when there are several processes."""
    if not launched_by_torchrun():
        return False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend)
    return dist.get_world_size() > 1


def shard(count: int, parts: int | None = None, index: int | None = None) -> range:
    """The contiguous share of ``count`` items that process ``index`` of ``parts`` reads."""
    parts = world_size() if parts is None else parts
    index = rank() if index is None else index
    return range(count * index // parts, count * (index + 1) // parts)


class ShardedBatchSampler(Sampler[list[int]]):
    """The global batches of one process-count-independent shuffle, each split between the processes.

    Every process draws the same permutation from ``generator`` (seeded alike), cuts it into
    global batches of ``batch_size`` and takes every ``parts``-th item of each. A last batch
    that does not divide evenly repeats its first images, so all processes take the same
    number of steps (or the gradient averaging would wait for ever).
    """

    def __init__(self, count: int, batch_size: int, generator: torch.Generator, parts: int, index: int) -> None:
        if count < parts:
            raise ValueError(f"{parts} processes need at least {parts} training images, got {count}")
        self.count, self.batch_size, self.generator = count, batch_size, generator
        self.parts, self.index = parts, index

    def __len__(self) -> int:
        return (self.count + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.count, generator=self.generator).tolist()
        for start in range(0, self.count, self.batch_size):
            batch = order[start : start + self.batch_size]
            size = len(batch)
            while len(batch) % self.parts:  # a short last batch repeats its own first images
                batch.append(batch[len(batch) - size])
            yield batch[self.index :: self.parts]


def _device_of(tensor: torch.Tensor) -> torch.device:
    """Where the collective runs: NCCL needs GPU tensors, gloo takes CPU ones."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over all processes, in every process."""
    if world_size() == 1:
        return tensor
    work = tensor.to(_device_of(tensor), copy=True).contiguous()  # never the caller's tensor, in place
    dist.all_reduce(work)
    return work.to(tensor.device)


def broadcast_from_main(tensor: torch.Tensor) -> torch.Tensor:
    """Process 0's ``tensor`` (same shape and dtype on every process)."""
    if world_size() == 1:
        return tensor
    work = tensor.to(_device_of(tensor), copy=True).contiguous()  # never the caller's tensor, in place
    dist.broadcast(work, src=0)
    return work.to(tensor.device)


def gather_rows(parts: Iterable[torch.Tensor]) -> torch.Tensor:
    """Every process's rows (each process's list concatenated), in rank order, in every process.

    With contiguous shards this is the one-process concatenation, row for row.
    """
    local = torch.cat(list(parts))
    if world_size() == 1:
        return local
    device = _device_of(local)
    counts = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world_size())]
    dist.all_gather(counts, torch.tensor([local.shape[0]], device=device))
    longest = int(max(int(c) for c in counts))
    padded = torch.zeros(longest, *local.shape[1:], dtype=local.dtype, device=device)
    padded[: local.shape[0]] = local
    gathered = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(gathered, padded)
    return torch.cat([g[: int(c)] for g, c in zip(gathered, counts)]).to(local.device)


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Give every process process 0's trainable parameters (the start DDP also enforces)."""
    if world_size() == 1:
        return
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.requires_grad:
                parameter.copy_(broadcast_from_main(parameter.data))


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Average the gradients over the processes, in one flat all-reduce (DDP's arithmetic).

    A parameter that got no gradient in one process but did in another (a branch taken on
    some batches only) counts as zero there, as in DDP with unused parameters.
    """
    if world_size() == 1:
        return
    parameters = [p for p in parameters if p.requires_grad]
    if not parameters:
        return
    device = _device_of(parameters[0])
    present = torch.tensor([p.grad is not None for p in parameters], dtype=torch.float32, device=device)
    dist.all_reduce(present, op=dist.ReduceOp.MAX)
    used = [p for p, flag in zip(parameters, present.tolist()) if flag]
    if not used:
        return
    flat = torch.cat(
        [
            (p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1).to(device, torch.float32)
            for p in used
        ]
    )
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for p in used:
        count = p.numel()
        averaged = flat[offset : offset + count].view_as(p).to(p.device, p.dtype)
        if p.grad is None:
            p.grad = averaged.clone()
        else:
            p.grad.copy_(averaged)
        offset += count


def finish() -> None:
    """Leave the process group (every process, at the end of its part)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def launch(argv: list[str], processes: int) -> int:
    """Run ``adcore ARGV`` as ``processes`` processes with torchrun on this machine; their exit status.

    Each process gets an equal share of the CPU threads (torchrun would give each one),
    unless ``OMP_NUM_THREADS`` says otherwise.
    """
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        "-m",
        "adcore",
        *argv,
    ]
    return subprocess.call(command, env=env)
