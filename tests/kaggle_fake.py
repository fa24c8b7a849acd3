"""A fake Kaggle API server (stdlib only) that the REAL `kaggle` client (2.2.x / kagglesdk 0.1.x) can talk to.

Wire protocol: /work/shared/KAGGLE-API.md. Every API call is `POST .../v1/<package>.<Service>/<Method>` with a
camelCase JSON body. The CSV competition calls are answered here; datasets, blob uploads, kernels and code submissions
by `CodeServices` (tests/kaggle_fake_code.py), which FakeKaggle mixes in. The server accepts both request forms:

* in process, after `point_client_at` patched kagglesdk's endpoint table: `POST /v1/competitions...`;
* from a subprocess configured by `FakeKaggle.client_env` (KAGGLE_API_ENVIRONMENT=LOCALHOST and HTTP_PROXY=this
  server): the client talks to `http://localhost/api` through the "proxy", so the request line carries an absolute URL
  `POST http://localhost/api/v1/competitions...`.

Known competitions are the keys of `archives`; any other slug gets a 404 JSON error in every call. API calls without an
Authorization header get a 401 JSON error (the real client always sends Basic auth for KAGGLE_USERNAME/KAGGLE_KEY).
"""

from __future__ import annotations

import io
import itertools
import json
import os
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from kaggle_fake_code import ApiError as _ApiError
from kaggle_fake_code import CodeServices, now_iso as _now_iso

SERVICE = "competitions.CompetitionApiService"
# Sent as Last-Modified of every archive. The client stamps the downloaded file's mtime with it and, on a later
# competition_download_files(force=False), skips the download when the local file is at least as large and not older.
LAST_MODIFIED = "Mon, 01 Jan 2024 00:00:00 GMT"
DEFAULT_PUBLIC_SCORE = "0.12345"
DEFAULT_PRIVATE_SCORE = "0.23456"
UPLOAD_FAILED = "Could not submit to competition"
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


class FakeKaggle(CodeServices):
    """A local Kaggle. Fill `archives`, set `fail` and the knobs, then inspect `requests`, `uploads`, `submissions`,
    and for code competitions `datasets`, `blobs`, `kernels`, `code_submissions` (see tests/kaggle_fake_code.py)."""

    last_modified: str = LAST_MODIFIED

    def __init__(self):
        self.archives: dict[str, bytes] = {}
        self.fail: dict[str, object] = {}
        self.uploads: list[dict] = []
        self.submissions: list[dict] = []
        self.polls_until_complete: int = 1
        self.requests: list[tuple[str, str]] = []
        self.auth_headers: list[str] = []
        self.port: int = 0
        self.url: str = ""
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._refs = itertools.count(1)
        self._tokens = itertools.count(1)
        self._pending_uploads: dict[str, dict] = {}  # token -> {"competition", "file_name"}
        self._polls_left: dict[int, int] = {}  # submission ref -> ListSubmissions calls still answered PENDING
        self._init_code_services()

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> "FakeKaggle":
        if self._server is not None:
            return self
        fake = self

        class Handler(_Handler):
            pass

        Handler.fake = fake
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="fake-kaggle", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> "FakeKaggle":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- client configuration ------------------------------------------------------------------------------------

    def client_env(self, home: Path) -> dict[str, str]:
        """Environment for a SUBPROCESS (dvc repro, the kaggle CLI) that must talk to this fake.

        The client then uses KaggleEnv.LOCAL (base http://localhost/api) and sends every request through the
        "proxy" HTTP_PROXY=this server; NO_PROXY is empty so localhost is not exempted.
        """
        home = Path(home)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.upper().startswith("KAGGLE_") and k.upper() not in _PROXY_VARS
        }
        (home / ".kaggle").mkdir(parents=True, exist_ok=True)
        env.update(
            HOME=str(home),
            KAGGLE_CONFIG_DIR=str(home / ".kaggle"),
            KAGGLE_USERNAME="testuser",
            KAGGLE_KEY="testkey",
            KAGGLE_API_ENVIRONMENT="LOCALHOST",
            HTTP_PROXY=self.url,
            http_proxy=self.url,
            NO_PROXY="",
            no_proxy="",
        )
        return env

    # -- request handling (called from the handler threads) ------------------------------------------------------

    def _log(self, method: str, what: str, auth: str | None) -> None:
        with self._lock:
            self.requests.append((method, what))
            if auth is not None:
                self.auth_headers.append(auth)

    def _check_slug(self, slug: object) -> str:
        if not isinstance(slug, str) or slug not in self.archives:
            raise _ApiError(404, f"Competition '{slug}' not found")
        return slug

    def _check_fail(self, step: str) -> None:
        failure = self.fail.get(step)
        if isinstance(failure, int) and not isinstance(failure, bool):
            raise _ApiError(failure, f"Fake Kaggle: {step} fails with HTTP {failure}")

    def _dispatch(self, service: str, method: str, body: dict) -> tuple[int, dict, dict]:
        """Answer one API call of any service: (HTTP status, extra headers, JSON body)."""
        if service == SERVICE and method != "CreateCodeSubmission":
            return self._api(method, body)
        return self._code_api(service, method, body)

    def _api(self, method: str, body: dict) -> tuple[int, dict, dict]:
        """Answer one CSV competition call: (HTTP status, extra headers, JSON body)."""
        slug = body.get("competitionName")
        if method == "ListDataFiles":
            self._check_slug(slug)
            self._check_fail("list")
            return 200, {}, {"files": self._data_files(slug), "nextPageToken": ""}
        if method == "DownloadDataFiles":
            self._check_slug(slug)
            self._check_fail("download")
            # Signed-URL style, like Kaggle's GCS redirect; the client names the file <slug>.<extension of path>.
            return 302, {"Location": f"{self.url}/files/{slug}.zip?X-Goog-Signature=fake"}, {}
        if method == "StartSubmissionUpload":
            self._check_slug(slug)
            self._check_fail("submit")
            with self._lock:
                token = f"blob-token-{next(self._tokens)}"
                self._pending_uploads[token] = {"competition": slug, "file_name": body.get("fileName", "")}
            return 200, {}, {"token": token, "createUrl": f"{self.url}/upload/{token}"}
        if method == "CreateSubmission":
            self._check_slug(slug)
            self._check_fail("submit")
            token = body.get("blobFileTokens", "")
            with self._lock:
                upload = next((u for u in self.uploads if u["token"] == token), None)
                if upload is None or upload["competition"] != slug:
                    raise _ApiError(400, f"Invalid blob file token '{token}'")
                if self.fail.get("submit") == "upload_fail":
                    return 200, {}, {"message": UPLOAD_FAILED}
                ref = next(self._refs)
                self.submissions.append(
                    {
                        "ref": ref,
                        "competition": slug,
                        "file_name": upload["file_name"],
                        "description": body.get("submissionDescription", ""),
                        "date": _now_iso(),
                        "status": "PENDING",
                        "public_score": None,
                        "private_score": None,
                    }
                )
                self._polls_left[ref] = self.polls_until_complete
            return 200, {}, {"message": f"Successfully submitted to {slug}", "ref": ref}
        if method == "ListSubmissions":
            self._check_slug(slug)
            self._check_fail("list")
            return 200, {}, {"submissions": self._list_submissions(slug), "nextPageToken": ""}
        raise _ApiError(404, f"Fake Kaggle does not implement {SERVICE}/{method}")

    def _data_files(self, slug: str) -> list[dict]:
        data = self.archives[slug]
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                return [
                    {"name": i.filename, "totalBytes": i.file_size, "creationDate": "2024-01-01T00:00:00.000Z"}
                    for i in zf.infolist()
                    if not i.is_dir()
                ]
        except zipfile.BadZipFile:
            return [{"name": f"{slug}.zip", "totalBytes": len(data), "creationDate": "2024-01-01T00:00:00.000Z"}]

    def _list_submissions(self, slug: str) -> list[dict]:
        out = []
        with self._lock:
            for sub in reversed(self.submissions):  # newest first, as Kaggle sorts by date
                if sub["competition"] != slug:
                    continue
                if sub["status"] == "PENDING":
                    left = self._polls_left.get(sub["ref"], 0)
                    if left > 0:
                        self._polls_left[sub["ref"]] = left - 1
                    else:
                        sub["status"] = "COMPLETE"
                        if sub.get("public_score") is None:
                            sub["public_score"] = DEFAULT_PUBLIC_SCORE
                        if sub.get("private_score") is None:
                            sub["private_score"] = DEFAULT_PRIVATE_SCORE
                wire = {
                    "ref": sub["ref"],
                    "fileName": sub["file_name"],
                    "date": sub["date"],
                    "description": sub["description"],
                    "status": sub["status"],
                }
                size = sub.get("total_bytes")
                if size is None:
                    size = next((len(u["bytes"]) for u in self.uploads if u["file_name"] == sub["file_name"]), None)
                if size is not None:
                    wire["totalBytes"] = size
                if sub["status"] == "COMPLETE":
                    for key, camel in (("public_score", "publicScore"), ("private_score", "privateScore")):
                        if sub.get(key) is not None:
                            wire[camel] = str(sub[key])
                if sub.get("error_description"):
                    wire["errorDescription"] = sub["error_description"]
                out.append(wire)
        return out

    def _file(self, name: str) -> tuple[int, dict, bytes]:
        slug = name[: -len(".zip")] if name.endswith(".zip") else None
        if slug is None or slug not in self.archives:
            raise _ApiError(404, f"No such file '{name}'")
        data = self.archives[slug]
        if self.fail.get("download") == "truncate":
            data = data[: len(data) // 2]
        headers = {"Content-Type": "application/zip", "Last-Modified": self.last_modified}
        return 200, headers, data

    def _put(self, token: str, data: bytes) -> None:
        with self._lock:
            pending = self._pending_uploads.pop(token, None)
            if pending is None:
                raise _ApiError(404, f"Unknown upload token '{token}'")
            self.uploads.append({"token": token, "bytes": data, **pending})


class _Handler(BaseHTTPRequestHandler):
    fake: FakeKaggle
    server_version = "FakeKaggle/1.0"

    def log_message(self, format, *args):  # keep test output clean
        pass

    # -- helpers ---------------------------------------------------------------------------------------------

    def _path(self) -> str:
        """The path of the request, whether sent in origin form (/v1/...) or through a proxy (http://host/...)."""
        return urlsplit(self.path).path

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, headers: dict, body: bytes) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, obj: dict, headers: dict | None = None) -> None:
        body = json.dumps(obj).encode() if obj or status != 302 else b""
        hdrs = {"Content-Type": "application/json"} if body else {}
        hdrs.update(headers or {})
        self._send(status, hdrs, body)

    def _send_error(self, err: _ApiError) -> None:
        self._send_json(err.code, {"code": err.code, "message": err.message})

    # -- verbs -----------------------------------------------------------------------------------------------

    def do_POST(self):
        path = self._path()
        body_bytes = self._read_body()
        parts = path.split("/v1/", 1)[-1].strip("/").split("/") if "/v1/" in path else []
        if len(parts) != 2:
            self.fake._log("POST", path, None)
            self._send_error(_ApiError(404, f"Unknown path '{path}'"))
            return
        service, method = parts
        auth = self.headers.get("Authorization")
        self.fake._log("POST", method, auth or "")
        try:
            if not auth:
                raise _ApiError(401, "Unauthenticated")
            try:
                body = json.loads(body_bytes or b"{}")
            except ValueError:
                raise _ApiError(400, "Body is not JSON") from None
            status, headers, obj = self.fake._dispatch(service, method, body if isinstance(body, dict) else {})
        except _ApiError as e:
            self._send_error(e)
            return
        self._send_json(status, obj, headers)

    def do_GET(self):
        path = self._path()
        self.fake._log(self.command, path, None)
        try:
            if path.startswith("/files/"):
                status, headers, data = self.fake._file(path[len("/files/"):])
            elif path.startswith("/kernel-output/"):
                status, headers, data = self.fake._kernel_file(path[len("/kernel-output/"):])
            else:
                raise _ApiError(404, f"Unknown path '{path}'")
        except _ApiError as e:
            self._send_error(e)
            return
        self._send(status, headers, data)

    do_HEAD = do_GET

    def do_PUT(self):
        path = self._path()
        data = self._read_body()
        self.fake._log("PUT", path, None)
        if path.startswith("/blob-upload/"):
            status, headers = self.fake._put_blob(path[len("/blob-upload/"):], self.headers, data)
            self._send(status, headers, b"")
            return
        prefix = "/upload/"
        try:
            if not path.startswith(prefix):
                raise _ApiError(404, f"Unknown path '{path}'")
            self.fake._put(path[len(prefix):], data)
        except _ApiError as e:
            self._send_error(e)
            return
        self._send(200, {"Content-Type": "application/json"}, b"{}")


def point_client_at(fake: FakeKaggle, monkeypatch, home: Path) -> None:
    """For IN-PROCESS use: make a KaggleApi built afterwards talk to `fake` with dummy credentials.

    Clears every KAGGLE_* and proxy variable, sets HOME/KAGGLE_CONFIG_DIR under `home`, KAGGLE_USERNAME=testuser,
    KAGGLE_KEY=testkey, and points kagglesdk's endpoint table (PROD, and LOCAL in case kaggle was first imported
    with KAGGLE_API_ENVIRONMENT=LOCALHOST) at the fake. kaggle freezes its config path (KaggleApi.config) when it is
    first imported; if it already is, that path is redirected under `home` too. Import kaggle only after this call.
    """
    import sys

    home = Path(home)
    config_dir = home / ".kaggle"
    config_dir.mkdir(parents=True, exist_ok=True)
    for key in list(os.environ):
        if key.upper().startswith("KAGGLE_") or key.upper() in _PROXY_VARS:
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(config_dir))
    monkeypatch.setenv("KAGGLE_USERNAME", "testuser")
    monkeypatch.setenv("KAGGLE_KEY", "testkey")

    from kagglesdk import kaggle_env

    monkeypatch.setitem(kaggle_env._env_to_endpoint, kaggle_env.KaggleEnv.PROD, fake.url)
    monkeypatch.setitem(kaggle_env._env_to_endpoint, kaggle_env.KaggleEnv.LOCAL, fake.url)

    extended = sys.modules.get("kaggle.api.kaggle_api_extended")
    if extended is not None:
        monkeypatch.setattr(extended.KaggleApi, "config_dir", str(config_dir))
        monkeypatch.setattr(extended.KaggleApi, "config", str(config_dir / extended.KaggleApi.config_file))
