"""Run one DVC stage's command and record its wall time and peak memory (for full_size.py, not a benchmark itself).

    python stage_meter.py python -m pipeline.stages.features statefarm main

The command runs as a child; every 50 ms the resident sets of the child and all its descendants (DataLoader
workers, decoding processes) are read from /proc and summed: the peak of that sum is the stage's peak RSS, what
a machine must hold at once. The largest single process's own peak (the kernel's, RUSAGE_CHILDREN) is kept
beside it. The stage's output passes through; the training epochs' "waiting on input N%" (the share of step time
spent waiting for the loader) is averaged into `input_wait`. One JSON line per stage is appended to
$STAGE_METER_LOG. Linux only (/proc).
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_kb(pid: int) -> int:
    """The summed resident set of `pid` and every descendant, now."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += _rss_kb(p)
        todo += _children(p)
    return total


def main() -> int:
    command = sys.argv[1:]
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    waits: list[int] = []

    def relay() -> None:  # the stage's output as it comes, and its input-wait readings
        for line in child.stdout:
            sys.stdout.write(line)
            waits.extend(int(m) for m in re.findall(r"waiting on input (\d+)%", line))

    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    peak = 0
    while child.poll() is None:
        peak = max(peak, tree_rss_kb(child.pid))
        time.sleep(0.05)
    reader.join()
    record = {"command": " ".join(command), "seconds": round(time.perf_counter() - start, 2),
              "peak_tree_mb": round(peak / 1024, 1),
              "peak_process_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
              "rc": child.returncode, "input_wait": round(sum(waits) / len(waits), 1) if waits else None}
    log = os.environ.get("STAGE_METER_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps(record) + "\n")
    return child.returncode


if __name__ == "__main__":
    sys.exit(main())
