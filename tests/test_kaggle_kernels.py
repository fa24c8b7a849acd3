"""Code competitions through the REAL `kaggle` client against the fake Kaggle on 127.0.0.1: publish a dataset, push
a kernel, wait for its run, read its log, submit its output; and every error a user can meet, in one line."""

import io
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

from kaggle_fake import FakeKaggle, point_client_at
from pipeline.commands.submit import wait_for_score
from pipeline.core.errors import KaggleError
from pipeline.data import kaggle_api
from pipeline.data.kaggle_kernels import (kernel_log_tail, kernel_status, publish_dataset, push_kernel, submit_code,
                                          wait_for_kernel)

SLUG = "tiny-code-competition"
DATASET = "testuser/tiny-models"
KERNEL = "testuser/tiny-submit"
CODE = "import pandas as pd\npd.DataFrame({'id': [1], 'label': [0.5]}).to_csv('submission.csv', index=False)\n"


@pytest.fixture
def fake(tmp_path, monkeypatch):
    with FakeKaggle() as server:
        server.archives[SLUG] = b""  # a known competition; its data files are not used here
        point_client_at(server, monkeypatch, tmp_path / "home")
        (tmp_path / "tmp").mkdir()
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # the client's resumable-upload state
        yield server


def dataset_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "dataset"
    (folder / "code").mkdir(parents=True)
    meta = {"id": DATASET, "title": "Tiny models", "licenses": [{"name": "CC0-1.0"}]}
    (folder / "dataset-metadata.json").write_text(json.dumps(meta))
    (folder / "weights.bin").write_bytes(b"\x00\x01weights" * 100)
    (folder / "code" / "predict.py").write_text("print('predict')\n")
    return folder


def kernel_folder(tmp_path: Path, **changes) -> Path:
    folder = tmp_path / "kernel"
    folder.mkdir(exist_ok=True)
    meta = {"id": KERNEL, "title": "Tiny submit", "code_file": "submit.py", "language": "python",
            "kernel_type": "script", "is_private": True, "enable_gpu": False, "enable_internet": False,
            "dataset_sources": [], "competition_sources": [SLUG], **changes}
    (folder / "kernel-metadata.json").write_text(json.dumps({k: v for k, v in meta.items() if v is not None}))
    (folder / "submit.py").write_text(CODE)
    return folder


def one_line_error(call, *args, **kwargs) -> str:
    with pytest.raises(KaggleError) as e:
        call(*args, **kwargs)
    msg = str(e.value)
    assert "\n" not in msg and "testkey" not in msg, msg
    return msg


def test_publish_push_wait_submit_and_score(fake, tmp_path):
    fake.interrupt_blob_uploads = 1  # the first upload is cut: the client probes with `bytes */N` and resumes
    fake.dataset_polls_until_ready = 2
    folder = dataset_folder(tmp_path)
    assert publish_dataset(folder, "first", poll_seconds=0.01) == DATASET
    dataset = fake.datasets[DATASET]
    assert dataset["is_private"] and dataset["title"] == "Tiny models" and len(dataset["versions"]) == 1
    files = dataset["versions"][0]["files"]
    assert sorted(files) == ["code.zip", "weights.bin"], "the subfolder goes up as a zip"
    assert files["weights.bin"] == (folder / "weights.bin").read_bytes()
    assert zipfile.ZipFile(io.BytesIO(files["code.zip"])).read("predict.py") == b"print('predict')\n"
    puts = [what for method, what in fake.requests if method == "PUT"]
    assert len(puts) == 4 and len(set(puts)) == 2, "the cut upload was probed and resumed, not restarted"

    (folder / "weights.bin").write_bytes(b"better weights")
    assert publish_dataset(folder, "second", poll_seconds=0.01) == DATASET
    assert [v["notes"] for v in dataset["versions"]] == ["", "second"]
    assert sorted(dataset["versions"][1]["files"]) == ["code.zip", "weights.bin"], "a version has every file too"
    assert dataset["versions"][1]["files"]["weights.bin"] == b"better weights"

    kernel = kernel_folder(tmp_path, dataset_sources=[DATASET])
    assert push_kernel(kernel) == (KERNEL, 1)
    assert push_kernel(kernel) == (KERNEL, 2)
    sent = fake.kernels[KERNEL]["versions"][-1]
    assert sent["text"] == CODE and sent["enableInternet"] is False and sent["isPrivate"] is True
    assert sent["datasetDataSources"] == [DATASET] and sent["competitionDataSources"] == [SLUG]

    seen = []
    assert wait_for_kernel(KERNEL, 0.01, 10, progress=seen.append) == "COMPLETE"
    assert seen == [f"kernel {KERNEL}: RUNNING", f"kernel {KERNEL}: COMPLETE"]
    assert kernel_status(KERNEL) == ("COMPLETE", "")
    assert kernel_log_tail(KERNEL) == f"Running {KERNEL} version 2"
    out = tmp_path / "output"
    kaggle_api.connect().kernels_output(KERNEL, str(out), quiet=True)  # what the notebook wrote, by plain GET
    assert (out / "submission.csv").read_bytes() == fake.kernel_outputs["submission.csv"]

    ref = submit_code(SLUG, KERNEL, 2, "submission.csv", "tiny v2")
    assert fake.code_submissions == [{"ref": int(ref), "competition": SLUG, "kernel": KERNEL, "version": 2,
                                      "file_name": "submission.csv", "description": "tiny v2"}]
    scored = wait_for_score(SLUG, ref, 0.01, 10)
    assert scored is not None and scored.public_score == "0.12345" and scored.description == "tiny v2"


def test_no_credentials_says_where_they_go(fake, tmp_path, monkeypatch):
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    calls = [(publish_dataset, dataset_folder(tmp_path), "notes"), (push_kernel, kernel_folder(tmp_path)),
             (kernel_status, KERNEL), (kernel_log_tail, KERNEL), (wait_for_kernel, KERNEL, 0.01, 1),
             (submit_code, SLUG, KERNEL, 1, "submission.csv", "m")]
    for call, *args in calls:
        msg = one_line_error(call, *args)
        assert "No Kaggle credentials" in msg and "~/.kaggle/kaggle.json" in msg, call.__name__
    assert fake.requests == []


def test_submit_without_accepted_rules_points_to_them(fake, tmp_path):
    push_kernel(kernel_folder(tmp_path))
    fake.fail["submit"] = 403
    msg = one_line_error(submit_code, SLUG, KERNEL, 1, "submission.csv", "m")
    assert "HTTP 403" in msg and f"https://www.kaggle.com/competitions/{SLUG}/rules" in msg
    assert fake.code_submissions == []


def test_failed_run_reports_error_and_the_log_tail_shows_why(fake, tmp_path):
    fake.kernel_failure = "ValueError: no test images in /kaggle/input"
    push_kernel(kernel_folder(tmp_path))
    seen = []
    assert wait_for_kernel(KERNEL, 0.01, 10, progress=seen.append) == "ERROR"
    assert seen[-1] == f"kernel {KERNEL}: ERROR (ValueError: no test images in /kaggle/input)"
    assert kernel_status(KERNEL) == ("ERROR", "ValueError: no test images in /kaggle/input")
    assert kernel_log_tail(KERNEL, lines=2) == "Traceback (most recent call last):\n" + fake.kernel_failure
    assert not [what for method, what in fake.requests if method == "GET"], "only the log is fetched, no outputs"


def test_kernel_still_running_after_timeout(fake, tmp_path):
    fake.kernel_polls_until_complete = 10_000
    push_kernel(kernel_folder(tmp_path))
    assert "still RUNNING after 0.05 s" in one_line_error(wait_for_kernel, KERNEL, 0.01, 0.05, progress=lambda _: None)


@pytest.mark.parametrize("internet", [True, None, "false"])
def test_internet_on_is_refused_before_anything_is_sent(fake, tmp_path, internet):
    msg = one_line_error(push_kernel, kernel_folder(tmp_path, enable_internet=internet))
    assert '"enable_internet": false' in msg and "kernel-metadata.json" in msg
    assert fake.requests == [] and fake.kernels == {}


def test_kaggle_refuses_a_version_with_internet_on(fake, tmp_path):
    """Pushed by hand, behind push_kernel's back: Kaggle's refusal still comes out in one line."""
    api = kaggle_api.connect()
    api.kernels_push(str(kernel_folder(tmp_path, enable_internet=True)))
    assert fake.kernels[KERNEL]["versions"][0]["enableInternet"] is True
    msg = one_line_error(submit_code, SLUG, KERNEL, 1, "submission.csv", "m")
    assert "internet enabled" in msg and "has internet off" in msg
    assert "has no version 3" in one_line_error(submit_code, SLUG, KERNEL, 3, "submission.csv", "m")


@pytest.mark.parametrize("version", ["2", 2.0, True, 0, None])
def test_a_version_that_is_not_a_whole_number_is_refused(fake, version):
    msg = one_line_error(submit_code, SLUG, KERNEL, version, "submission.csv", "m")
    assert f"got {version!r}" in msg
    assert fake.requests == []


@pytest.mark.parametrize("answer, shown", [("no_version", "no version number"),
                                           ("string_version", "version '1', not a whole number")])
def test_push_without_a_whole_version_number_is_an_error(fake, tmp_path, answer, shown):
    fake.fail["kernel"] = answer
    msg = one_line_error(push_kernel, kernel_folder(tmp_path))
    assert f"answered {shown}" in msg


def test_invalid_dataset_source_is_reported(fake, tmp_path):
    msg = one_line_error(push_kernel, kernel_folder(tmp_path, dataset_sources=["testuser/never-published"]))
    assert "dataset_sources ['testuser/never-published']" in msg and "publish the dataset" in msg


def test_save_kernel_error_is_raised(fake, tmp_path):
    fake.fail["kernel"] = "Notebook exceeds the size limit"
    assert "Notebook exceeds the size limit" in one_line_error(push_kernel, kernel_folder(tmp_path))


def test_submission_reported_only_in_message_is_an_error(fake, tmp_path):
    push_kernel(kernel_folder(tmp_path))
    fake.fail["submit"] = "upload_fail"
    assert "Could not submit to competition" in one_line_error(submit_code, SLUG, KERNEL, 1, "submission.csv", "m")


def test_unknown_competition_and_rejected_key(fake, tmp_path):
    push_kernel(kernel_folder(tmp_path))
    assert "no competition 'no-such-comp' (HTTP 404)" in one_line_error(
        submit_code, "no-such-comp", KERNEL, 1, "submission.csv", "m")
    assert "the kernel 'testuser/no-such-kernel' (HTTP 404)" in one_line_error(kernel_status, "testuser/no-such-kernel")
    assert "slug must be at least five characters" in one_line_error(kernel_status, "testuser/nope")  # the client's
    fake.fail["kernel"] = 401  # the client re-raises this as a ValueError blaming the slug
    assert "rejected your credentials (HTTP 401)" in one_line_error(kernel_status, KERNEL)


def test_taken_or_foreign_dataset_and_processing_failure(fake, tmp_path):
    folder = dataset_folder(tmp_path)
    fake.dataset_final_status = "FAILED"
    assert "could not process dataset 'testuser/tiny-models' (status failed)" in one_line_error(
        publish_dataset, folder, "n", poll_seconds=0.01)
    fake.dataset_final_status = "READY"
    fake.fail["dataset"] = "The requested slug is already in use"  # the client returns this, it does not raise
    msg = one_line_error(publish_dataset, folder, "n")
    assert "already in use" in msg and "choose another 'id'" in msg
    fake.fail["dataset"] = 403
    assert "the dataset 'testuser/tiny-models' (HTTP 403)" in one_line_error(publish_dataset, folder, "n")


def test_cli_kernels_status_through_proxy(fake, tmp_path):
    fake.kernel_polls_until_complete = 0
    push_kernel(kernel_folder(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "kaggle.cli", "kernels", "status", KERNEL],
                          env=fake.client_env(tmp_path / "cli-home"), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f'{KERNEL} has status "KernelWorkerStatus.COMPLETE"' in proc.stdout
    assert "testkey" not in proc.stdout + proc.stderr
