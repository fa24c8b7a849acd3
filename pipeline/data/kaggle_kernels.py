"""Code competitions through the official `kaggle` client: publish a dataset, push a kernel, wait for its run,
read its log, submit its output.

The client prints many of its errors and returns normally (a taken dataset slug, a kernel push with an error or
invalid sources, a submission it could not make), so every answer is checked here and turned into a one-line
KaggleError naming the fix. Credentials are never printed.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from pathlib import Path
from typing import Callable

from pipeline.core.errors import KaggleError
from pipeline.data.kaggle_api import connect, explain, rules_url

DATASET_METADATA = "dataset-metadata.json"
KERNEL_METADATA = "kernel-metadata.json"
FINAL_KERNEL_STATES = ("COMPLETE", "ERROR")  # and every CANCEL_* state
_NO_FILES = "(?!)"  # a pattern no file name matches: kernel_log_tail wants the log, not the (possibly big) outputs


@contextlib.contextmanager
def _client_errors(action: str, ref: str, kind: str, fix: str = "Check it and run again."):
    """Turn what the client raises into one-line KaggleErrors: HTTP and network errors via `explain`, the
    client's own ValueErrors (bad metadata, a malformed ref) with `fix` appended."""
    import requests

    try:
        yield
    except ValueError as e:
        # kernels status/output re-raise a 401/403 as a ValueError blaming the slug; the HTTP error is its context
        if isinstance(e.__context__, requests.exceptions.HTTPError):
            raise explain(e.__context__, ref, action, kind) from None
        raise KaggleError(f"The kaggle client refused to {action} the {kind} '{ref}': {e}. {fix}") from None
    except (requests.exceptions.RequestException, OSError) as e:
        raise explain(e, ref, action, kind) from None


def _read_metadata(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise KaggleError(f"Cannot read {path} ({type(e).__name__}: {e}); write it as a JSON object.") from None
    if not isinstance(meta, dict):
        raise KaggleError(f"{path} must hold a JSON object; got {type(meta).__name__}.")
    return meta


def _owner_slug(value: object, path: Path) -> str:
    parts = value.split("/") if isinstance(value, str) else []
    if len(parts) != 2 or not all(parts):
        raise KaggleError(f"The 'id' in {path} must be 'owner/slug' (owner = your Kaggle username); got {value!r}.")
    return str(value)


def publish_dataset(folder: Path, notes: str, poll_seconds: float = 5.0, timeout: float = 1800.0) -> str:
    """Create the private dataset described by `folder/dataset-metadata.json`, or a new version of it when it
    exists, uploading every file and subfolder (as a zip); wait until Kaggle has processed it. Returns "owner/slug"."""
    folder = Path(folder)
    meta_path = folder / DATASET_METADATA
    ref = _owner_slug(_read_metadata(meta_path).get("id"), meta_path)
    api = connect()
    with _client_errors("publish", ref, "dataset", f"Fix {meta_path} and run again."):
        if _dataset_exists(api, ref):
            result = api.dataset_create_version(str(folder), notes, quiet=True, dir_mode="zip")
        else:
            result = api.dataset_create_new(str(folder), public=False, quiet=True, dir_mode="zip")
    status = str(getattr(result, "status", "") or "")
    if getattr(result, "error", None) or status.lower() != "ok":
        raise KaggleError(
            f"Kaggle did not publish dataset '{ref}' (status {status or 'missing'}: "
            f"{result.error or 'no reason given'}); if the slug is taken, choose another 'id' in {meta_path}, then "
            "run again."
        )
    _wait_for_dataset(api, ref, poll_seconds, timeout)
    return ref


def _dataset_exists(api, ref: str) -> bool:
    import requests

    try:
        api.dataset_status(ref)
    except requests.exceptions.HTTPError as e:
        if e.response is not None and e.response.status_code == 404:
            return False
        raise
    return True


def _wait_for_dataset(api, ref: str, poll_seconds: float, timeout: float) -> None:
    start = time.monotonic()
    while True:
        with _client_errors("get the status of", ref, "dataset"):
            status = str(api.dataset_status(ref))
        if status == "ready":
            return
        if status in ("failed", "deleted"):
            raise KaggleError(
                f"Kaggle could not process dataset '{ref}' (status {status}); see https://www.kaggle.com/datasets/"
                f"{ref}, fix its files and publish again."
            )
        if time.monotonic() - start > timeout:
            raise KaggleError(
                f"Dataset '{ref}' is still '{status}' after {timeout:g} s; run again once "
                f"https://www.kaggle.com/datasets/{ref} shows it ready, or give a longer timeout."
            )
        time.sleep(poll_seconds)


def push_kernel(folder: Path) -> tuple[str, int]:
    """`kaggle kernels push -p folder`: save and run a new version. Returns ("owner/slug", version number).

    Refuses metadata whose `enable_internet` is not explicitly false before sending anything: the client turns
    internet on when the key is missing, and Kaggle refuses code submissions from notebooks with internet on.
    """
    folder = Path(folder)
    meta_path = folder / KERNEL_METADATA
    meta = _read_metadata(meta_path)
    if meta.get("enable_internet") is not False:
        found = repr(meta["enable_internet"]) if "enable_internet" in meta else "missing (the client then turns it on)"
        found += " (a string, not the JSON boolean)" if isinstance(meta.get("enable_internet"), str) else ""
        raise KaggleError(
            f"{meta_path} must set \"enable_internet\": false (Kaggle refuses code submissions from notebooks with "
            f"internet on); got {found}. Set it to false and push again."
        )
    ref = str(meta.get("id", ""))
    api = connect()
    with _client_errors("push", ref, "kernel", f"Fix {meta_path} and push again."):
        result = api.kernels_push(str(folder))
    if result.error:
        raise KaggleError(f"Kaggle refused to save kernel '{ref}': {result.error}. Fix {folder} and push again.")
    invalid = {
        kind: list(getattr(result, f"invalid_{kind}_sources", None) or [])
        for kind in ("dataset", "competition", "kernel", "model")
    }
    invalid = {kind: names for kind, names in invalid.items() if names}
    if invalid:
        listed = "; ".join(f"{kind}_sources {names}" for kind, names in invalid.items())
        raise KaggleError(
            f"Kaggle saved kernel '{ref}' without these sources, which it cannot find or you cannot use: {listed}. "
            f"Fix them in {meta_path} (publish the dataset / accept the competition's rules first) and push again."
        )
    version = result.version_number  # the client answers 0 when Kaggle sent none
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        found = f"version {version!r}, not a whole number" if version else "no version number"
        raise KaggleError(
            f"Kaggle saved kernel '{ref}' but answered {found}; see "
            f"{result.url or 'the notebook on kaggle.com'} for the version that runs, and submit that one."
        )
    return _kernel_ref(result.ref, ref), version


def _kernel_ref(answered: str, asked: str) -> str:
    """"owner/slug" from the ref Kaggle answers (which may carry a "/code/" prefix), else from the metadata id."""
    parts = [p for p in str(answered or "").split("/") if p]
    return "/".join(parts[-2:]) if len(parts) >= 2 else asked


def kernel_status(ref: str) -> tuple[str, str]:
    """The status of the latest run of kernel "owner/slug" (QUEUED, RUNNING, COMPLETE, ERROR, CANCEL_...) and
    its failure message ("" when none)."""
    return _kernel_status(connect(), ref)


def _kernel_status(api, ref: str) -> tuple[str, str]:
    with _client_errors("get the status of", ref, "kernel"):
        answer = api.kernels_status(ref)
    status = getattr(answer.status, "name", None) or str(answer.status)
    return status, answer.failure_message or ""


def wait_for_kernel(ref: str, poll_seconds: float, timeout: float, progress: Callable[[str], object] = print) -> str:
    """Poll kernel "owner/slug" until its run ends; report each change of status; return the final status
    (COMPLETE, ERROR or CANCEL_...). KaggleError when it is still running after `timeout` seconds."""
    api = connect()
    start = time.monotonic()
    last = None
    while True:
        status, failure = _kernel_status(api, ref)
        if status != last:
            progress(f"kernel {ref}: {status}" + (f" ({failure})" if failure else ""))
            last = status
        if status in FINAL_KERNEL_STATES or status.startswith("CANCEL"):
            return status
        if time.monotonic() - start > timeout:
            raise KaggleError(
                f"Kernel '{ref}' is still {status} after {timeout:g} s; follow it at https://www.kaggle.com/code/"
                f"{ref} and wait again with a longer timeout."
            )
        time.sleep(poll_seconds)


def kernel_log_tail(ref: str, lines: int = 20) -> str:
    """The last `lines` lines of the log of kernel "owner/slug"'s latest run ("" when it has none)."""
    api = connect()
    with tempfile.TemporaryDirectory() as tmp, _client_errors("read the log of", ref, "kernel"):
        api.kernels_output(ref, tmp, file_pattern=_NO_FILES, force=True, quiet=True)
        log = Path(tmp) / f"{api.parse_kernel_string(ref)[1]}.log"  # the name the client gives it
        text = log.read_text(encoding="utf-8", errors="replace") if log.is_file() else ""
    return "\n".join(_log_lines(text)[-lines:]) if lines > 0 else ""


def _log_lines(text: str) -> list[str]:
    """Kaggle's log is a JSON list of {"stream_name", "time", "data"} entries; plain text is taken as it is."""
    try:
        entries = json.loads(text)
    except ValueError:
        return text.splitlines()
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        return text.splitlines()
    return "".join(str(e.get("data", "")) for e in entries).splitlines()


def submit_code(slug: str, kernel_ref: str, version: int, file_name: str, message: str) -> str:
    """`kaggle competitions submit slug -k owner/kernel -v version -f file_name -m message`; returns the
    submission's ref. Kaggle reruns that kernel version on the hidden test set and scores `file_name`."""
    import requests

    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise KaggleError(
            f"The kernel version to submit must be a whole number of at least 1 (the one push_kernel returned); "
            f"got {version!r}."
        )
    api = connect()
    with _client_errors("submit to", slug, "competition", "Check the kernel ref (owner/slug) and run again."):
        try:
            result = api.competition_submit_code(file_name, message, slug, kernel_ref, version, quiet=True)
        except requests.exceptions.HTTPError as e:
            if e.response is None or e.response.status_code != 400:
                raise
            raise KaggleError(
                f"Kaggle refused to submit version {version} of kernel '{kernel_ref}' to '{slug}' ({e}); check that "
                f"this version exists and ran, writes {file_name}, and has internet off, then submit again."
            ) from None
    if not getattr(result, "ref", None):
        raise KaggleError(
            f"Kaggle did not accept version {version} of kernel '{kernel_ref}' for '{slug}' "
            f"({getattr(result, 'message', '') or 'no reply'}). Check that the competition still takes submissions "
            f"and that its rules are accepted ({rules_url(slug)}), then run again."
        )
    return str(result.ref)
