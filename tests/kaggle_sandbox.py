"""Run a generated Kaggle notebook as Kaggle would: a clean process, no network, and only a `/kaggle` tree.

- The Python: a fresh venv (no pip of its own) that sees this venv's third-party packages, as Kaggle's image has
  torch, timm and the rest, but not this project: the editable install is a `.pth` of this venv's site-packages,
  which a path added by another `.pth` does not run. The notebook must install the project from its dataset.
- The network: `unshare -n` (a namespace with no interface up: every connect fails), and an audit hook in the
  sandbox's `sitecustomize` that records, then refuses, any internet socket or name lookup, in every Python
  process of the sandbox (pip's too). A notebook that tries is caught even where it swallows the error.
- The files: `unshare -m` with the test's folder bind-mounted at `/kaggle` (input/<slug>/ for each attached
  dataset or competition, working/ as the current folder), seen by that process tree only.
Needs root for the namespaces (CI and this machine are root).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

SITECUSTOMIZE = '''
import os, socket, sys
_LOG = os.environ.get("SANDBOX_SOCKET_LOG")

def _refuse(event, args):
    if event == "socket.getaddrinfo" or (event == "socket.connect" and args[0].family in (socket.AF_INET,
                                                                                     socket.AF_INET6)):
        if _LOG:
            with open(_LOG, "a") as f:
                f.write(f"{event} {args!r} in {sys.argv!r}\\n")
        raise OSError(f"the Kaggle sandbox has no network ({event})")

sys.addaudithook(_refuse)
'''


def available() -> str | None:
    """Why the sandbox cannot run here, or None when it can."""
    if not shutil.which("unshare") or os.geteuid() != 0:
        return "the Kaggle sandbox needs root and unshare (network and mount namespaces)"
    probe = subprocess.run(["unshare", "-m", "-n", "true"], capture_output=True)
    return None if probe.returncode == 0 else f"unshare failed: {probe.stderr.decode().strip()}"


def kaggle_python(folder: Path) -> Path:
    """A venv at `folder` with this venv's third-party packages and not this project; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    site = Path(subprocess.run([str(folder / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()"
                                "['purelib'])"], check=True, capture_output=True, text=True).stdout.strip())
    (site / "kaggle_image.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return folder / "bin" / "python"


def run_notebook(python: Path, script: Path, kaggle: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `script` with `python` inside the sandbox, `kaggle` mounted at /kaggle (its input/ already filled).
    The socket log is `kaggle/sockets.log` (outside /kaggle/input)."""
    (kaggle / "working").mkdir(parents=True, exist_ok=True)
    log = kaggle.parent / f"{kaggle.name}-sockets.log"
    log.unlink(missing_ok=True)
    env = {"PATH": "/usr/bin:/bin", "HOME": "/kaggle/working", "SANDBOX_SOCKET_LOG": str(log), "LANG": "C.UTF-8"}
    inner = (f"mkdir -p /kaggle && mount --bind {kaggle} /kaggle && cd /kaggle/working && "
             f"exec {python} -I {script}")
    result = subprocess.run(["unshare", "-m", "-n", "sh", "-c", inner], env=env, capture_output=True, text=True,
                            timeout=timeout)
    result.sockets = log.read_text() if log.is_file() else ""
    return result
