"""The code-competition half of the fake Kaggle (tests/kaggle_fake.py): datasets, resumable blob uploads, kernels
and code submissions, as the REAL `kaggle` client 2.2.x speaks them (wire table: /work/shared/KAGGLE-API.md).

`FakeKaggle` mixes `CodeServices` in; its HTTP handler sends every call that is not one of the CSV competition calls
to `_code_api`, blob PUTs to `_put_blob` and kernel output GETs to `_kernel_file`. The mixin uses FakeKaggle's lock,
`fail`, `archives` (the known competitions), `submissions` and submission counters, so a code submission is listed and
scored by ListSubmissions exactly like a CSV one.

Knobs: `dataset_polls_until_ready`, `dataset_final_status`, `kernel_polls_until_complete`, `kernel_failure`,
`kernel_log`, `kernel_outputs`, `interrupt_blob_uploads`; and in `fail`:
* "dataset" / "kernel" / "submit": an HTTP status answers every call of that service with that error;
* "dataset": any text is answered by CreateDataset/CreateDatasetVersion as `error` with status "error" (a taken slug);
* "kernel": "no_version" / "string_version" (SaveKernel leaves versionNumber out / sends it as a string), or any
  other text (SaveKernel answers it as `error`);
* "submit": "upload_fail" (CreateCodeSubmission answers a message and no ref).
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone

DATASETS = "datasets.DatasetApiService"
BLOBS = "blobs.BlobApiService"
KERNELS = "kernels.KernelsApiService"
COMPETITIONS = "competitions.CompetitionApiService"
SUBMIT_FAILED = "Could not submit to competition"
DEFAULT_OUTPUTS = {"submission.csv": b"id,label\n1,0.5\n2,0.25\n"}


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


class ApiError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class CodeServices:
    """State (inspect it in tests) and knobs of the code-competition services."""

    def _init_code_services(self) -> None:
        # "owner/slug" -> {"title", "license", "is_private", "versions": [{"notes", "files": {name: bytes}}]}
        self.datasets: dict[str, dict] = {}
        # token -> {"name", "type", "length", "bytes"}; "bytes" grows with each PUT
        self.blobs: dict[str, dict] = {}
        # "owner/slug" -> {"versions": [SaveKernel bodies as sent], "polls_left", "status", "failure", "log"}
        self.kernels: dict[str, dict] = {}
        # {"ref", "competition", "kernel", "version", "file_name", "description"}
        self.code_submissions: list[dict] = []
        self.dataset_polls_until_ready: int = 1  # GetDatasetStatus answers BLOBS_RECEIVED this often per version
        self.dataset_final_status: str = "READY"
        self.kernel_polls_until_complete: int = 1  # GetKernelSessionStatus answers RUNNING this often per push
        self.kernel_failure: str | None = None  # set: runs end in ERROR with this failureMessage
        self.kernel_log: str | None = None  # None: a log in Kaggle's JSON form, naming the run and any failure
        self.kernel_outputs: dict[str, bytes] = dict(DEFAULT_OUTPUTS)
        self.interrupt_blob_uploads: int = 0  # this many blob PUTs keep half the bytes and answer 503

    def _code_api(self, service: str, method: str, body: dict) -> tuple[int, dict, dict]:
        handler = {
            (DATASETS, "GetDatasetStatus"): self._dataset_status,
            (BLOBS, "StartBlobUpload"): self._start_blob,
            (DATASETS, "CreateDataset"): self._create_dataset,
            (DATASETS, "CreateDatasetVersion"): self._create_dataset_version,
            (KERNELS, "SaveKernel"): self._save_kernel,
            (KERNELS, "GetKernelSessionStatus"): self._kernel_status,
            (KERNELS, "ListKernelSessionOutput"): self._kernel_output,
            (COMPETITIONS, "CreateCodeSubmission"): self._create_code_submission,
        }.get((service, method))
        if handler is None:
            raise ApiError(404, f"Fake Kaggle does not implement {service}/{method}")
        failure = self.fail.get({DATASETS: "dataset", BLOBS: "dataset", KERNELS: "kernel"}.get(service, "submit"))
        if isinstance(failure, int) and not isinstance(failure, bool):
            raise ApiError(failure, f"Fake Kaggle: {service}/{method} fails with HTTP {failure}")
        with self._lock:
            return 200, {}, handler(body)

    # -- datasets and blobs ----------------------------------------------------------------------------------------

    def _dataset(self, ref: str) -> dict:
        if ref not in self.datasets:
            raise ApiError(404, f"Dataset '{ref}' not found")
        return self.datasets[ref]

    def _dataset_status(self, body: dict) -> dict:
        dataset = self._dataset(f"{body.get('ownerSlug')}/{body.get('datasetSlug')}")
        if dataset["polls_left"] > 0:
            dataset["polls_left"] -= 1
            return {"status": "BLOBS_RECEIVED"}
        return {"status": self.dataset_final_status}

    def _start_blob(self, body: dict) -> dict:
        token = f"blob-{len(self.blobs) + 1}"
        self.blobs[token] = {"name": body.get("name", ""), "type": body.get("type"),
                             "length": int(body.get("contentLength", 0)), "bytes": b""}
        return {"token": token, "createUrl": f"{self.url}/blob-upload/{token}"}

    def _uploaded_files(self, files: list) -> dict[str, bytes]:
        out = {}
        for entry in files or []:
            blob = self.blobs.get(entry.get("token"))
            if blob is None or len(blob["bytes"]) != blob["length"]:
                raise ApiError(400, f"Blob token '{entry.get('token')}' is unknown or its upload is incomplete")
            out[blob["name"]] = blob["bytes"]
        return out

    def _refused(self) -> dict | None:
        failure = self.fail.get("dataset")
        return {"status": "error", "error": failure} if isinstance(failure, str) else None

    def _add_version(self, dataset: dict, notes: str, files: list) -> None:
        dataset["versions"].append({"notes": notes, "files": self._uploaded_files(files)})
        dataset["polls_left"] = self.dataset_polls_until_ready

    def _create_dataset(self, body: dict) -> dict:
        ref = f"{body.get('ownerSlug')}/{body.get('slug')}"
        if self._refused():
            return self._refused()
        if ref in self.datasets:
            return {"status": "error", "error": f"The slug '{body.get('slug')}' is already in use"}
        dataset = {"title": body.get("title"), "license": body.get("licenseName"),
                   "is_private": body.get("isPrivate", False), "versions": [], "polls_left": 0}
        self._add_version(dataset, "", body.get("files"))
        self.datasets[ref] = dataset
        return {"ref": ref, "url": f"https://www.kaggle.com/datasets/{ref}", "status": "ok"}

    def _create_dataset_version(self, body: dict) -> dict:
        ref = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
        inner = body.get("body") or {}
        if self._refused():
            return self._refused()
        self._add_version(self._dataset(ref), inner.get("versionNotes", ""), inner.get("files"))
        return {"ref": ref, "url": f"https://www.kaggle.com/datasets/{ref}", "status": "ok"}

    def _put_blob(self, token: str, headers, data: bytes) -> tuple[int, dict]:
        """A resumable upload: a `bytes */N` probe answers 200 when complete, else 308 with the Range received."""
        with self._lock:
            blob = self.blobs.get(token)
            if blob is None:
                return 404, {}
            content_range = headers.get("Content-Range", "")
            if content_range.startswith("bytes */"):
                if len(blob["bytes"]) == blob["length"]:
                    return 200, {}
                return 308, ({"Range": f"bytes=0-{len(blob['bytes']) - 1}"} if blob["bytes"] else {})
            start = re.match(r"bytes (\d+)-", content_range)
            if (int(start.group(1)) if start else 0) != len(blob["bytes"]):
                return 400, {}
            if self.interrupt_blob_uploads > 0:
                self.interrupt_blob_uploads -= 1
                blob["bytes"] += data[: len(data) // 2]
                return 503, {}
            blob["bytes"] += data
            return 200, {}

    # -- kernels ---------------------------------------------------------------------------------------------------

    def _kernel(self, body: dict) -> tuple[str, dict]:
        ref = f"{body.get('userName')}/{body.get('kernelSlug')}"
        if ref not in self.kernels:
            raise ApiError(404, f"Kernel '{ref}' not found")
        return ref, self.kernels[ref]

    def _save_kernel(self, body: dict) -> dict:
        slug = str(body.get("slug") or "")
        ref = slug if "/" in slug else f"testuser/{slug}"
        failure = self.fail.get("kernel")
        if isinstance(failure, str) and failure not in ("no_version", "string_version"):
            return {"error": failure}
        kernel = self.kernels.setdefault(ref, {"versions": []})
        kernel["versions"].append(body)
        version = len(kernel["versions"])
        log = self.kernel_log
        if log is None:
            entries = [{"stream_name": "stdout", "time": 0.5, "data": f"Running {ref} version {version}\n"}]
            if self.kernel_failure:
                entries.append({"stream_name": "stderr", "time": 1.5,
                                "data": f"Traceback (most recent call last):\n{self.kernel_failure}\n"})
            log = json.dumps(entries)
        kernel.update(polls_left=self.kernel_polls_until_complete, failure=self.kernel_failure, log=log,
                      status="ERROR" if self.kernel_failure else "COMPLETE")
        answer = {"ref": ref, "url": f"https://www.kaggle.com/code/{ref}", "versionNumber": version}
        if failure == "no_version":
            del answer["versionNumber"]
        elif failure == "string_version":
            answer["versionNumber"] = str(version)
        invalid = {
            "invalidDatasetSources": [s for s in body.get("datasetDataSources", []) if s not in self.datasets],
            "invalidCompetitionSources": [s for s in body.get("competitionDataSources", []) if s not in self.archives],
        }
        answer.update({key: names for key, names in invalid.items() if names})
        return answer

    def _kernel_status(self, body: dict) -> dict:
        _, kernel = self._kernel(body)
        if kernel["polls_left"] > 0:
            kernel["polls_left"] -= 1
            return {"status": "RUNNING"}
        answer = {"status": kernel["status"]}
        if kernel["failure"]:
            answer["failureMessage"] = kernel["failure"]
        return answer

    def _kernel_output(self, body: dict) -> dict:
        ref, kernel = self._kernel(body)
        files = [{"fileName": name, "url": f"{self.url}/kernel-output/{ref}/{name}"} for name in self.kernel_outputs]
        return {"files": files, "log": kernel["log"]}

    def _kernel_file(self, rest: str) -> tuple[int, dict, bytes]:
        owner, slug, name = (rest.split("/", 2) + ["", ""])[:3]
        if f"{owner}/{slug}" not in self.kernels or name not in self.kernel_outputs:
            raise ApiError(404, f"No output '{rest}'")
        return 200, {"Content-Type": "application/octet-stream"}, self.kernel_outputs[name]

    # -- code submissions ------------------------------------------------------------------------------------------

    def _create_code_submission(self, body: dict) -> dict:
        slug = body.get("competitionName")
        if slug not in self.archives:
            raise ApiError(404, f"Competition '{slug}' not found")
        ref = f"{body.get('kernelOwner')}/{body.get('kernelSlug')}"
        versions = self.kernels.get(ref, {}).get("versions", [])
        version = body.get("kernelVersion", len(versions))
        if not isinstance(version, int) or not 1 <= version <= len(versions):
            raise ApiError(400, f"Kernel '{ref}' has no version {version}")
        if versions[version - 1].get("enableInternet", True) is not False:
            raise ApiError(400, f"Kernel '{ref}' version {version} has internet enabled; code submissions need it off")
        if self.fail.get("submit") == "upload_fail":
            return {"message": SUBMIT_FAILED}
        file_name = body.get("fileName", "")
        sub_ref = next(self._refs)
        self.code_submissions.append({"ref": sub_ref, "competition": slug, "kernel": ref, "version": version,
                                      "file_name": file_name, "description": body.get("submissionDescription", "")})
        self.submissions.append({"ref": sub_ref, "competition": slug, "file_name": file_name,
                                 "description": body.get("submissionDescription", ""), "date": now_iso(),
                                 "status": "PENDING", "public_score": None, "private_score": None,
                                 "total_bytes": len(self.kernel_outputs.get(file_name, b""))})
        self._polls_left[sub_ref] = self.polls_until_complete
        return {"message": f"Successfully submitted to {slug}", "ref": sub_ref}
