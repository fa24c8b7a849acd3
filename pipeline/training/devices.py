"""Where training runs: the device, the data-parallel processes `torchrun` starts, mixed precision, and how
batches reach the device."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from pipeline.core.errors import DeviceError
from pipeline.core.machine import usable_cpus


def pick_device(name: str) -> torch.device:
    """`auto` -> the GPU when there is one; `cuda` without a GPU is an error, not a silent CPU run."""
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("device: 'cuda' was asked for in params.yaml but torch sees no GPU; use 'auto' or 'cpu'.")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass(frozen=True)
class Workers:
    """This process's place among the data-parallel processes `torchrun` started (one, without torchrun)."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes outputs, curves and progress."""
        return self.rank == 0


@contextlib.contextmanager
def distributed(device_name: str):
    """Yield this process's `Workers`. Started by `torchrun --nproc-per-node N`, the N processes join one
    process group (NCCL, each on its own GPU `LOCAL_RANK`; gloo on CPUs) for data-parallel training; otherwise
    this is the only process. The group is left on exit, also after an error."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(device_name)
    if world == 1:
        yield Workers(0, 1, device)
        return
    import torch.distributed as td

    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise DeviceError(f"torchrun started process {local} on this machine, but torch sees "
                              f"{torch.cuda.device_count()} GPU(s); give launch's --nproc-per-node at most that.")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    td.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield Workers(td.get_rank(), world, device)
        td.barrier()  # leave together: gloo aborts a process that tears down while another still writes
    finally:
        td.destroy_process_group()


def is_main() -> bool:
    import torch.distributed as td

    return not td.is_available() or not td.is_initialized() or td.get_rank() == 0


def loader_workers(asked: int, device: torch.device, processes: int = 1) -> int:
    """DataLoader worker processes: as asked, or with -1 none on a CPU (the network's threads use every core, so
    workers would only compete with it: measured in benchmarks/features_speed.py) and, on a GPU, one per core of
    this process's share of them, up to 8."""
    if asked >= 0:
        return asked
    if device.type == "cpu":
        return 0
    here = int(os.environ.get("LOCAL_WORLD_SIZE", processes))  # processes on this machine (torchrun's)
    return max(1, min(8, usable_cpus() // here))


def amp_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the GPU computes it natively (Ampere and later: no loss scaling needed); float16 elsewhere (T4,
    V100, P100 emulate bf16 slowly), which needs a gradient scaler when training."""
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


def autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=amp_dtype(device))
    return contextlib.nullcontext()


def grad_scaler(device: torch.device, amp: bool) -> torch.amp.GradScaler:
    """Loss scaling for float16 autocast (a no-op otherwise: CPU, no AMP, or bf16)."""
    enabled = amp and device.type == "cuda" and amp_dtype(device) == torch.float16
    return torch.amp.GradScaler("cuda", enabled=enabled)


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """A batch on `device` as float32 (images arrive as uint8 pixel values: a quarter of the bytes to move; the
    network normalises them there), channels-last when asked (the network's layout)."""
    x = x.to(device, non_blocking=True).float()
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x
