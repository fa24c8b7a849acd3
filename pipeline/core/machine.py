"""Where a stage ran (torch version, device kind, CPU and GPU model), recorded beside its outputs: the same params
give slightly other numbers on another machine, so `pipeline compare` tells a change from another machine's noise.
Also the cores this process may use. No torch import here: the ensemble reads these records without it."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version


def usable_cpus() -> int:
    """The CPU cores this process may use (its affinity where the OS has one: Linux; else all of them: macOS)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:  # Linux: the model's name ("AMD EPYC 7B13"); platform gives only x86_64
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device) -> dict:
    """This machine, for a stage computing on `device` (a torch.device)."""
    try:
        torch_version = version("torch")
    except PackageNotFoundError:
        torch_version = "unknown"
    env = {"torch": torch_version, "device": device.type, "cpu": cpu_model()}
    if device.type == "cuda":
        import torch

        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def describe(env: dict) -> str:
    return f"torch {env.get('torch')} on {env.get('gpu') or env.get('cpu')} ({env.get('device')})"
