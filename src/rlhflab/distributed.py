"""Data-parallel training under ``torchrun``: one process per device, each with its share of every batch.

``torchrun --nproc_per_node N $(which rlhflab) train ...`` starts N copies of the trainer. Each joins the process
group (NCCL for CUDA tensors, Gloo for CPU tensors) and then, every step:

1. takes a disjoint, contiguous share of the same global prompt order (every process holds the same sampler);
   ``rollout.batch_size`` stays the GLOBAL batch: each process samples ``batch_size / N`` completions with its
   own token generator (``seed + rank``), and a prompt's k samples always live on one process;
2. judges and scores its own rows;
3. computes advantages with global statistics: whitening uses all-reduced sums and counts, the RLOO
   ``batch_mean`` baseline is the global mean (group statistics stay per process: a group never straddles two);
4. normalises every loss by the GLOBAL minibatch's token / sequence counts, so its local loss is a partial sum of
   the global loss, and all-reduces (sums) the gradients of the trainable parameters (LoRA + value head) before
   clipping and the optimiser step: the update equals a single process's update on the concatenated minibatch;
5. reduces the metrics; only rank 0 writes config, metrics, checkpoints, reports and runs the evaluation.

A single process (no ``torchrun``, or ``--nproc_per_node 1``) gets :data:`SINGLE`, whose collectives are the
identity: the single-process code path and its numbers do not change. See ``docs/distributed.md``.

With ``distributed.fsdp`` the frozen base weights are also sharded over the processes (:func:`shard_model`, FSDP2);
the adapters stay whole, so the steps above do not change, and generation stops only when every process's rows
have ended (:meth:`Dist.all`): a sharded forward is a collective.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as tdist

from rlhflab.errors import UserError
from rlhflab.models.loading import transformer_blocks


def launched_rank() -> int:
    """This process's rank as torchrun announced it (0 without torchrun); usable before the group exists."""
    return int(os.environ.get("RANK", "0"))


@dataclass(frozen=True)
class Dist:
    """Where this process stands among the data-parallel processes, and the few collectives the trainer needs.

    Every collective must be called by every process, in the same order; with one process each is the identity
    (and returns its input object unchanged).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs and writes files."""
        return self.rank == 0

    # ------------------------------------------------------------------------------------------------------------
    # data

    def device(self, device: torch.device) -> torch.device:
        """This process's device: with several processes a CUDA device becomes ``cuda:LOCAL_RANK``."""
        if not self.enabled or device.type != "cuda":
            return device
        if device.index is not None and device.index != self.local_rank:
            raise UserError(
                f"model.device: {device} names one GPU, but under torchrun each process uses cuda:LOCAL_RANK; "
                "use model.device=auto or cuda (restrict the GPUs with CUDA_VISIBLE_DEVICES)"
            )
        return torch.device("cuda", self.local_rank)

    def shard(self, items: list) -> list:
        """This process's contiguous share of ``items`` (whose length the world size divides)."""
        if not self.enabled:
            return items
        n = len(items) // self.world_size
        return items[self.rank * n : (self.rank + 1) * n]

    def check_batch(self, batch_size: int, samples_per_prompt: int, num_minibatches: int, micro_batch_size: int):
        """The batch arithmetic a process count must satisfy (the config checks it for one process)."""
        if not self.enabled:
            return
        w = self.world_size
        if batch_size % w:
            raise UserError(
                f"rollout.batch_size ({batch_size}) must be divisible by the number of processes ({w}): "
                "it is the global batch, and each process samples rollout.batch_size / processes completions"
            )
        local = batch_size // w
        if local % samples_per_prompt:
            raise UserError(
                f"rollout.batch_size / processes = {local} must be divisible by rollout.samples_per_prompt "
                f"({samples_per_prompt}): a prompt's samples stay on one process"
            )
        minibatch = local // num_minibatches
        # a micro-batch larger than the minibatch is a memory limit that is not reached: one micro-batch
        if local % num_minibatches or (minibatch > micro_batch_size and minibatch % micro_batch_size):
            raise UserError(
                f"rollout.batch_size / processes = {local} must split into algorithm.num_minibatches "
                f"({num_minibatches}) minibatches of whole train.micro_batch_size ({micro_batch_size}) chunks"
            )

    # ------------------------------------------------------------------------------------------------------------
    # collectives

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        """Σ of ``x`` over processes (a new tensor); ``x`` itself for one process. The ``reduce_sum`` of ops."""
        if not self.enabled:
            return x
        x = x.clone()
        tdist.all_reduce(x, op=tdist.ReduceOp.SUM)
        return x

    @property
    def reduce_sum(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """:meth:`sum` for ``rlhflab.ops`` functions; None for one process (their plain local path)."""
        return self.sum if self.enabled else None

    def max_int(self, value: int) -> int:
        if not self.enabled:
            return value
        x = torch.tensor([value], dtype=torch.int64)
        tdist.all_reduce(x, op=tdist.ReduceOp.MAX)
        return int(x.item())

    def any(self, flag: bool) -> bool:
        """True when ``flag`` is true on any process (e.g. a stop request that reached one of them)."""
        return bool(self.max_int(int(flag))) if self.enabled else flag

    def all(self, flag: bool) -> bool:
        """True when ``flag`` is true on every process (e.g. "all my rows have ended" in generation)."""
        return not self.any(not flag) if self.enabled else flag

    def sum_values(self, values: dict[str, float]) -> dict[str, float]:
        """Σ over processes of each value (float64, one collective); ``values`` itself for one process."""
        if not self.enabled:
            return values
        keys = sorted(values)
        x = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        tdist.all_reduce(x, op=tdist.ReduceOp.SUM)
        return dict(zip(keys, x.tolist()))

    def max_values(self, values: dict[str, float]) -> dict[str, float]:
        if not self.enabled:
            return values
        keys = sorted(values)
        x = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        tdist.all_reduce(x, op=tdist.ReduceOp.MAX)
        return dict(zip(keys, x.tolist()))

    def gather_rows(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Every process's rows of (B, T) tensors, concatenated in rank order and right-padded (0 / False) to the
        longest T: the global batch, on every process. For statistics that sums alone cannot give."""
        if not self.enabled:
            return tensors
        width = self.max_int(tensors[0].shape[1])
        out = []
        for x in tensors:
            padded = torch.nn.functional.pad(x.to(torch.float64), (0, width - x.shape[1]))
            parts = [torch.empty_like(padded) for _ in range(self.world_size)]
            tdist.all_gather(parts, padded.contiguous())
            out.append(torch.cat(parts).to(x.dtype))
        return tuple(out)

    def all_reduce_gradients(self, params: Sequence[torch.nn.Parameter], loss_finite: bool) -> bool:
        """Sum the gradients of ``params`` over processes, in place; returns whether every process's loss was
        finite (so that all of them skip, or all of them step).

        Each process's loss is its partial sum of the global minibatch loss (normalised by global counts), so the
        sum is the gradient of the global loss; no division by the process count. One collective on one flat
        fp32 buffer (LoRA + value head are small), with the non-finite flag as its last element.
        """
        if not self.enabled:
            return loss_finite
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flag = torch.zeros(1, dtype=torch.float32, device=grads[0].device) + (0.0 if loss_finite else 1.0)
        flat = torch.cat([g.detach().reshape(-1).float() for g in grads] + [flag])
        tdist.all_reduce(flat, op=tdist.ReduceOp.SUM)
        offset = 0
        for p, g in zip(params, grads):
            summed = flat[offset : offset + g.numel()].view_as(g).to(g.dtype)
            if p.grad is None:
                p.grad = summed
            else:
                p.grad.copy_(summed)
            offset += g.numel()
        return flat[-1].item() == 0

    def broadcast_parameters(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Copy rank 0's values of ``params`` to every process (identical starting weights, as DDP does)."""
        if not self.enabled:
            return
        with torch.no_grad():
            for p in params:
                tdist.broadcast(p.data, src=0)

    def all_gather_objects(self, obj) -> list:
        """``[obj of rank 0, obj of rank 1, ...]`` on every process (small picklable objects: RNG states)."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        tdist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            tdist.barrier()

    @contextlib.contextmanager
    def main_process_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. builds a cache), the other processes after it (and find it built)."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def close(self) -> None:
        if self.enabled and tdist.is_initialized():
            tdist.destroy_process_group()


SINGLE = Dist()
"""One process, no process group: every collective is the identity."""


def shard_model(model: torch.nn.Module, replicated: set[torch.nn.Parameter], device: torch.device) -> None:
    """FSDP2 (``fully_shard``) over all processes: every parameter of ``model`` except ``replicated`` is split
    into one shard per process (dim 0); one unit per transformer block, the root unit for the rest (embeddings,
    final norm, LM head). Before a unit's forward (and again in backward) its shards are all-gathered into the
    full weights, and freed after it (the root's stay gathered between its forward and backward).

    ``replicated`` (the LoRA adapters) stays whole on every process: FSDP neither shards them nor reduces their
    gradients, so :meth:`Dist.all_reduce_gradients` still does. The block classes are the ones the model names in
    ``_no_split_modules`` (Hugging Face models do). ``model`` may sit on the CPU (a base too big for one GPU):
    each unit moves to ``device`` when it is sharded, one block's full weights at a time; ``replicated`` is moved
    here. Call it on every process, after the adapters exist and before the optimiser is built.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    blocks = transformer_blocks(model, "distributed.fsdp")
    mesh = init_device_mesh(device.type, (tdist.get_world_size(),))
    for block in reversed(blocks):  # bottom-up: a unit takes the parameters no inner unit has taken
        fully_shard(block, mesh=mesh, ignored_params=replicated)
    fully_shard(model, mesh=mesh, ignored_params=replicated)
    with torch.no_grad():
        for p in replicated:
            p.data = p.data.to(device)


def init(device: torch.device) -> Dist:
    """Join torchrun's process group (``env://`` rendezvous: RANK, WORLD_SIZE, MASTER_ADDR/PORT from torchrun).

    Backend: Gloo for a CPU run; for a CUDA run ``cpu:gloo,cuda:nccl`` (NCCL moves the CUDA tensors: gradients,
    token counts; Gloo the few CPU scalars and RNG states) after selecting ``cuda:LOCAL_RANK``. Without torchrun, or
    with one process, returns :data:`SINGLE` and creates no group.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return SINGLE
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if torch.cuda.device_count() <= local_rank:
            raise UserError(
                f"process {rank} wants cuda:{local_rank}, but only {torch.cuda.device_count()} GPU(s) are visible: "
                "start at most one process per GPU (--nproc_per_node)"
            )
        torch.cuda.set_device(local_rank)
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    if not tdist.is_initialized():
        tdist.init_process_group(backend=backend)
    return Dist(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend)
