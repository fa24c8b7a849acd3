"""The REAL `kaggle` client against tests/kaggle_fake.py, without any pipeline code: proves the fake speaks the wire
protocol the client expects, and pins the client behaviours the pipeline relies on."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import requests

from kaggle_fake import FakeKaggle, point_client_at

SLUG = "dogs-vs-cats"


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


ARCHIVE = _zip({"train/cat.1.jpg": b"\xff\xd8cat" * 50, "test/1.jpg": b"\xff\xd8dog" * 40, "sample.csv": b"id,label\n"})


@pytest.fixture
def fake():
    with FakeKaggle() as f:
        f.archives[SLUG] = ARCHIVE
        yield f


@pytest.fixture
def api(fake, monkeypatch, tmp_path):
    """A fresh, authenticated KaggleApi talking to the fake (kaggle imported only after the env is pointed)."""
    point_client_at(fake, monkeypatch, tmp_path / "home")
    from kaggle.api.kaggle_api_extended import KaggleApi

    client = KaggleApi()
    client.authenticate()
    return client


# ---- in process ------------------------------------------------------------------------------------------------


def test_download_writes_slug_zip_with_exact_bytes_and_sends_credentials(api, fake, tmp_path):
    out = tmp_path / "dl"
    api.competition_download_files(SLUG, path=str(out), quiet=True)
    assert (out / f"{SLUG}.zip").read_bytes() == ARCHIVE
    assert sorted(p.name for p in out.iterdir()) == [f"{SLUG}.zip"]  # no .kaggle-partial marker left behind
    assert ("POST", "DownloadDataFiles") in fake.requests
    assert ("GET", f"/files/{SLUG}.zip") in fake.requests
    assert fake.auth_headers and set(fake.auth_headers) == {"Basic " + base64.b64encode(b"testuser:testkey").decode()}


def test_download_skips_an_up_to_date_local_file_unless_forced(api, fake, tmp_path):
    out = tmp_path / "dl"
    out.mkdir()
    stale = out / f"{SLUG}.zip"
    stale.write_bytes(b"x" * (len(ARCHIVE) + 10))  # newer than Last-Modified and not smaller: kept as is
    api.competition_download_files(SLUG, path=str(out), quiet=True)
    assert stale.read_bytes() == b"x" * (len(ARCHIVE) + 10)
    api.competition_download_files(SLUG, path=str(out), force=True, quiet=True)
    assert stale.read_bytes() == ARCHIVE
    stale.write_bytes(b"short")  # a smaller local file is always fetched again
    api.competition_download_files(SLUG, path=str(out), quiet=True)
    assert stale.read_bytes() == ARCHIVE


def test_list_files(api, fake):
    result = api.competition_list_files(SLUG)
    assert sorted(f.name for f in result.files) == ["sample.csv", "test/1.jpg", "train/cat.1.jpg"]
    assert all(f.total_bytes > 0 for f in result.files)


@pytest.mark.parametrize("code", [401, 403, 404, 500])
def test_download_http_errors_raise_httperror(api, fake, tmp_path, code):
    fake.fail["download"] = code
    with pytest.raises(requests.exceptions.HTTPError) as info:
        api.competition_download_files(SLUG, path=str(tmp_path / "dl"), quiet=True)
    assert info.value.response.status_code == code
    assert not (tmp_path / "dl" / f"{SLUG}.zip").exists()


def test_unknown_competition_is_404_everywhere(api, fake, tmp_path):
    with pytest.raises(requests.exceptions.HTTPError) as info:
        api.competition_download_files("no-such-comp", path=str(tmp_path), quiet=True)
    assert info.value.response.status_code == 404
    sub = tmp_path / "s.csv"
    sub.write_text("id,label\n1,0.5\n")
    with pytest.raises(requests.exceptions.HTTPError) as info:
        api.competition_submit(str(sub), "m", "no-such-comp", quiet=True)
    assert info.value.response.status_code == 404
    with pytest.raises(requests.exceptions.HTTPError) as info:
        api.competition_submissions("no-such-comp")
    assert info.value.response.status_code == 404


def test_truncated_download_is_written_without_error(api, fake, tmp_path):
    """The client only checks the size against Content-Length: a short archive arrives silently as a bad zip."""
    fake.fail["download"] = "truncate"
    out = tmp_path / "dl"
    api.competition_download_files(SLUG, path=str(out), quiet=True)
    data = (out / f"{SLUG}.zip").read_bytes()
    assert data == ARCHIVE[: len(ARCHIVE) // 2]
    assert not zipfile.is_zipfile(out / f"{SLUG}.zip")


def test_submit_uploads_exact_bytes_and_lists_until_complete(api, fake, tmp_path):
    from kagglesdk.competitions.types.submission_status import SubmissionStatus

    sub = tmp_path / "submission.csv"
    sub.write_bytes(b"id,label\n1,0.9\n2,0.1\n")
    fake.polls_until_complete = 2
    result = api.competition_submit(str(sub), "first try", SLUG, quiet=True)
    assert isinstance(result.ref, int) and result.ref > 0
    assert result.message == f"Successfully submitted to {SLUG}"
    (upload,) = fake.uploads
    assert upload == {"token": upload["token"], "bytes": sub.read_bytes(), "file_name": "submission.csv",
                      "competition": SLUG}
    assert [m for _, m in fake.requests if not m.startswith("/")] == ["StartSubmissionUpload", "CreateSubmission"]
    assert fake.submissions[0]["ref"] == result.ref and fake.submissions[0]["description"] == "first try"

    for _ in range(2):
        (s,) = api.competition_submissions(SLUG)
        assert s.status == SubmissionStatus.PENDING and s.public_score == ""
    (s,) = api.competition_submissions(SLUG)
    assert s.ref == result.ref and s.file_name == "submission.csv" and s.description == "first try"
    assert s.status == SubmissionStatus.COMPLETE and s.status.name == "COMPLETE"
    assert (s.public_score, s.private_score) == ("0.12345", "0.23456")
    assert s.total_bytes == len(sub.read_bytes()) and s.date.year >= 2024


def test_submissions_newest_first_and_scores_overridable(api, fake, tmp_path):
    sub = tmp_path / "a.csv"
    sub.write_text("id,label\n1,1\n")
    fake.polls_until_complete = 0
    first = api.competition_submit(str(sub), "one", SLUG, quiet=True)
    second = api.competition_submit(str(sub), "two", SLUG, quiet=True)
    assert second.ref > first.ref
    fake.submissions[1]["public_score"] = "0.99"
    subs = api.competition_submissions(SLUG)
    assert [s.ref for s in subs] == [second.ref, first.ref]
    assert [s.public_score for s in subs] == ["0.99", "0.12345"]


def test_upload_fail_answers_message_without_ref(api, fake, tmp_path):
    sub = tmp_path / "submission.csv"
    sub.write_text("id,label\n1,0.5\n")
    fake.fail["submit"] = "upload_fail"
    result = api.competition_submit(str(sub), "msg", SLUG, quiet=True)
    assert result.message == "Could not submit to competition"
    assert not result.ref  # ApiCreateSubmissionResponse.ref defaults to 0
    assert fake.submissions == []


@pytest.mark.parametrize("code", [401, 403])
def test_submit_and_list_http_errors(api, fake, tmp_path, code):
    sub = tmp_path / "submission.csv"
    sub.write_text("id,label\n1,0.5\n")
    fake.fail["submit"] = code
    with pytest.raises(requests.exceptions.HTTPError) as info:
        api.competition_submit(str(sub), "msg", SLUG, quiet=True)
    assert info.value.response.status_code == code
    assert fake.uploads == []
    fake.fail["list"] = code
    with pytest.raises(requests.exceptions.HTTPError) as info:
        api.competition_submissions(SLUG)
    assert info.value.response.status_code == code


def test_no_credentials_authenticate_exits(fake, monkeypatch, tmp_path, capsys):
    point_client_at(fake, monkeypatch, tmp_path / "home")
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    from kaggle.api.kaggle_api_extended import KaggleApi

    with pytest.raises(SystemExit) as info:
        KaggleApi().authenticate()
    assert info.value.code == 1
    assert "Authentication required" in capsys.readouterr().out
    assert fake.requests == []


def test_proxy_form_absolute_urls_are_served(fake):
    """What a subprocess using client_env sends: absolute URLs for http://localhost/api via HTTP_PROXY."""
    proxies = {"http": fake.url}
    base = "http://localhost/api/v1/competitions.CompetitionApiService"
    r = requests.post(f"{base}/ListDataFiles", json={"competitionName": SLUG}, proxies=proxies,
                      auth=("testuser", "testkey"), timeout=5)
    assert r.status_code == 200 and len(r.json()["files"]) == 3
    r = requests.post(f"{base}/DownloadDataFiles", json={"competitionName": SLUG}, proxies=proxies,
                      auth=("testuser", "testkey"), allow_redirects=False, timeout=5)
    assert r.status_code == 302 and r.headers["Location"].split("?")[0] == f"{fake.url}/files/{SLUG}.zip"
    r = requests.post(f"{base}/ListSubmissions", json={"competitionName": SLUG}, proxies=proxies, timeout=5)
    assert r.status_code == 401 and r.json()["code"] == 401  # no Authorization header


def test_client_env_drops_kaggle_and_proxy_vars(fake, monkeypatch, tmp_path):
    monkeypatch.setenv("KAGGLE_API_TOKEN", "real-secret")
    monkeypatch.setenv("HTTPS_PROXY", "http://corp:3128")
    monkeypatch.setenv("no_proxy", "localhost,127.0.0.1")
    env = fake.client_env(tmp_path)
    assert "KAGGLE_API_TOKEN" not in env and "HTTPS_PROXY" not in env
    assert env["no_proxy"] == env["NO_PROXY"] == ""
    assert env["HTTP_PROXY"] == env["http_proxy"] == fake.url
    assert env["HOME"] == str(tmp_path) and env["KAGGLE_CONFIG_DIR"] == str(tmp_path / ".kaggle")
    assert env["KAGGLE_USERNAME"] == "testuser" and env["KAGGLE_KEY"] == "testkey"
    assert env["KAGGLE_API_ENVIRONMENT"] == "LOCALHOST"


# ---- subprocess (the CLI, as dvc repro would run it) -------------------------------------------------------------


def _cli(fake, home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kaggle.cli", *args], env=fake.client_env(home),
                          capture_output=True, text=True, timeout=60)


def test_cli_download_through_proxy(fake, tmp_path):
    out = tmp_path / "dl"
    proc = _cli(fake, tmp_path / "home", "competitions", "download", "-c", SLUG, "-p", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (out / f"{SLUG}.zip").read_bytes() == ARCHIVE
    assert ("POST", "DownloadDataFiles") in fake.requests
    assert "testkey" not in proc.stdout + proc.stderr


def test_cli_submit_and_errors_through_proxy(fake, tmp_path):
    sub = tmp_path / "submission.csv"
    sub.write_bytes(b"id,label\n1,0.5\n")
    proc = _cli(fake, tmp_path / "home", "competitions", "submit", "-c", SLUG, "-f", str(sub), "-m", "cli msg")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert fake.uploads[0]["bytes"] == sub.read_bytes() and fake.submissions[0]["description"] == "cli msg"
    fake.fail["download"] = 403
    proc = _cli(fake, tmp_path / "home", "competitions", "download", "-c", SLUG, "-p", str(tmp_path / "dl"))
    assert proc.returncode == 1 and "403" in proc.stderr
