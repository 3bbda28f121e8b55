"""Several processes (``accelerate launch`` / ``torchrun``): the same weights on every rank, and
the global sums and counts each loss term is divided by.

Why the weights can differ: with FSDP, ``accelerate launch`` turns ``fsdp_cpu_ram_efficient_loading``
on by default (env ``FSDP_CPU_RAM_EFFICIENT_LOADING=true``). transformers then reads the weight
files on local rank 0 only and leaves the other ranks to FSDP's broadcast from rank 0. A model
that FSDP never wraps, such as the local KD teacher, keeps empty weights there: on 2x H200 with
transformers 5.17, rank 1's teacher was all 0.0 and KD trained against a uniform distribution
without an error (issue 19). So every model is loaded inside ``load_on_every_rank()``, and the
trainer compares ``weights_checksum`` across ranks before the first step (``check_same_weights``).
"""

from __future__ import annotations

import os
import zlib
from contextlib import contextmanager
from typing import Any, Iterator

import torch

from potstill.errors import PotstillError

RANK0_ONLY_LOADING = "FSDP_CPU_RAM_EFFICIENT_LOADING"
_MOD = (1 << 61) - 1  # a Mersenne prime: checksums stay exact Python ints that fit an int64
_CHUNK = 1 << 24  # elements per step, so the int64 copy of a large embedding stays ~128 MiB


@contextmanager
def load_on_every_rank() -> Iterator[None]:
    """Read the weight files on every rank whatever accelerate's loading flags say.

    Each process then holds one full copy in host memory while loading, which is what the flag
    saves; for the models potstill trains (up to a few billion parameters) that is affordable,
    and a teacher outside FSDP needs the full copy anyway."""
    before = os.environ.get(RANK0_ONLY_LOADING)
    os.environ[RANK0_ONLY_LOADING] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(RANK0_ONLY_LOADING, None)
        else:
            os.environ[RANK0_ONLY_LOADING] = before


def _tensor_sum(t: torch.Tensor) -> int:
    """Exact, position-weighted sum of the bit patterns of ``t`` (any dtype, any device)."""
    if t.device.type == "meta":
        return -1  # never loaded: differs from any real tensor's sum
    flat = t.detach().contiguous().reshape(-1)
    if flat.numel() == 0:
        return 0
    bits = flat.view({1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[flat.element_size()])
    total = 0
    for c0 in range(0, bits.numel(), _CHUNK):
        part = bits[c0:c0 + _CHUNK].to(torch.int64)
        weight = (torch.arange(c0, c0 + part.numel(), device=part.device) % 65521) + 1
        total = (total + int((part * weight).sum())) % _MOD  # int64 wrap-around is deterministic
    return total


def weights_checksum(model: Any) -> int:
    """One integer for every parameter and buffer (non-persistent ones too: rotary tables) of
    ``model``, equal on two processes exactly when their tensors are bit-identical (up to
    a checksum collision)."""
    total = 0
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        total = (total * 1_000_003 + zlib.crc32(name.encode()) + _tensor_sum(t)) % _MOD
    return total


def gathered(values: list[int], device: torch.device) -> list[list[int]]:
    """``values`` of every rank (rank order), through one all-gather."""
    import torch.distributed as dist

    local = torch.tensor(values, dtype=torch.int64, device=device)
    out = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(out, local)
    return [t.tolist() for t in out]


def gather_objects(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` in a single process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def check_same_weights(models: dict[str, Any], device: torch.device) -> dict[str, int]:
    """Refuse to go on if any model's weights differ from rank 0's; returns this rank's checksums
    (none with one process).

    ``models``: a display name (e.g. ``teacher 'path'``) to the module. Every rank must call it."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return {}  # one process: nothing to compare, and a large teacher's checksum costs a pass over it
    sums = {name: weights_checksum(m) for name, m in models.items()}
    ranks = gathered(list(sums.values()), device)
    for i, name in enumerate(sums):
        for rank, row in enumerate(ranks):
            if row[i] != ranks[0][i]:
                raise PotstillError(
                    f"the {name} has other weights on rank {rank} than on rank 0 (checksum {row[i]:x} vs "
                    f"{ranks[0][i]:x}); refusing to train: every process must load the same files")
    return sums


def global_counts(accel: Any, local: dict[str, int], terms: tuple[str, ...]) -> dict[str, float]:
    """Each term's count of positions (``local``: this process's) summed over processes."""
    if accel.num_processes == 1:
        return {k: float(v) for k, v in local.items()}
    t = accel.reduce(torch.tensor([float(local[k]) for k in terms], device=accel.device), "sum")
    return dict(zip(terms, t.tolist()))


def global_values(accel: Any, values: dict[str, torch.Tensor | float]) -> dict[str, float]:
    """Per-process shares of global means (or counts), summed over processes: one all-reduce, one sync."""
    x = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=accel.device).detach().reshape(())
                     for v in values.values()])
    if accel.num_processes > 1:
        x = accel.reduce(x, "sum")
    return dict(zip(values, x.tolist()))


def deal(batch: list, world: int, least: int = 1) -> list[list]:
    """Split a global batch over processes with balanced token counts (longest first, to the lightest),
    each share holding at least ``least`` examples (``len(batch) >= world * least``).

    The update does not depend on the split (every term is a global sum over a global count); the
    balance keeps one process from waiting on another that got the long examples. ``least`` is for
    a share split again into that many micro-batches: by tokens alone, 4 examples of 100, 10, 10 and
    10 tokens over 2 processes gave one process the long one only, and its second micro-batch none."""
    if world == 1:
        return [batch]
    shares: list[list] = [[] for _ in range(world)]
    load = [0] * world
    todo = sorted(batch, key=lambda e: -len(e.ids))
    for k, e in enumerate(todo):
        short = [i for i in range(world) if len(shares[i]) < least]
        # Once the examples left are only as many as the short shares still need, they go to those.
        need = sum(least - len(shares[i]) for i in short)
        r = min(short if need >= len(todo) - k else range(world), key=lambda i: (load[i], len(shares[i])))
        shares[r].append(e)
        load[r] += len(e.ids)
    return shares


def fsdp_plugin() -> Any:
    """Under ``accelerate launch --use_fsdp``: the env's FSDP settings, with fp32 weights in compute.

    bf16 then comes from autocast, exactly as under DDP or one GPU, so the numerics (fp32 norms,
    embeddings and residual stream, bf16 matmuls) and hence the loss curve are the same; accelerate's
    default bf16 FSDP policy would make every weight bf16 in compute."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() not in ("1", "true"):
        return None
    from accelerate import FullyShardedDataParallelPlugin

    if os.environ.get("FSDP_VERSION", "1") == "2":
        from torch.distributed.fsdp import MixedPrecisionPolicy as Policy
    else:
        from torch.distributed.fsdp import MixedPrecision as Policy
    return FullyShardedDataParallelPlugin(mixed_precision_policy=Policy())


def accelerator(cuda: bool, mixed_precision: str) -> Any:
    """The run's ``Accelerator`` on the CPU or the GPU, with ``mixed_precision``.

    accelerate keeps one process-wide state and refuses another device or precision once set
    ("AcceleratorState has already been initialized and cannot be changed, restart your runtime"):
    a second ``train()`` in one process (a notebook, a sweep over depths, bf16 then float32 on a
    GPU, or the caller's own ``Accelerator`` first) ended in that traceback. In a single process
    nothing is shared with other ranks, so the state is started afresh when it disagrees; under a
    launcher (several processes) it is the launcher's and is left alone."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, DistributedType

    state = AcceleratorState._shared_state
    if state and state.get("distributed_type") == DistributedType.NO and state.get("num_processes", 1) == 1:
        device = state.get("device")
        if state.get("_mixed_precision") != mixed_precision or (device is not None and (device.type == "cuda") != cuda):
            AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(cpu=not cuda, mixed_precision=mixed_precision, fsdp_plugin=fsdp_plugin())


def shutdown() -> None:
    """Destroy the process group of a finished multi-process run (``torchrun``, ``accelerate launch``).

    Left to the interpreter's exit, a rank of a run that had finished and saved aborted now and then
    ("terminate called without an active exception", SIGABRT: gloo's threads torn down unjoined; 1 of
    12 two-process CPU runs here), and the launcher reported the whole run as failed. ``potstill``'s
    CLI calls this when a command succeeds; a script that calls ``train()`` under a launcher should
    too. Nothing happens in a single process."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
