"""Real Kaggle paths against a fake Kaggle on 127.0.0.1: the official client, never mocked.

In process: download.run with `source: kaggle`, and every error a user can meet. In subprocesses: `dvc repro`
of the download stage and the `pipeline submit` / `pipeline submissions` console script.
"""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import make_project, sh, tiny_params
from kaggle_fake import FakeKaggle, point_client_at
from pipeline.stages import download
from pipeline.commands import submit
from pipeline.core.errors import ArchiveError
from pipeline.core.competitions import get_competition
from pipeline.data.demo import write_demo_archive
from pipeline.core.io import write_json
from pipeline.core.errors import KaggleError, SubmissionError
from pipeline.core.paths import Paths
from pipeline.scoring.submission import make_submission, read_sample

DC = get_competition("dogscats")
SF = get_competition("statefarm")


def demo_bytes(tmp_path, comp) -> bytes:
    demo = tiny_params().comp(comp.name).data.demo
    return write_demo_archive(comp, demo, 0, tmp_path / "src" / f"{comp.slug}.zip").read_bytes()


@pytest.fixture
def fake(tmp_path, monkeypatch):
    with FakeKaggle() as server:
        server.archives[DC.slug] = demo_bytes(tmp_path, DC)
        server.archives[SF.slug] = demo_bytes(tmp_path, SF)
        point_client_at(server, monkeypatch, tmp_path / "home")
        yield server


def kaggle_params(comp="statefarm"):
    return tiny_params(**{f"{comp}.data.source": "kaggle"})


def file_gets(server) -> int:
    return sum(1 for method, what in server.requests if method == "GET" and what.endswith(".zip"))


def test_download_from_kaggle_then_rerun_fetches_nothing(fake, tmp_path):
    root = tmp_path / "root"
    raw = download.run(kaggle_params(), "statefarm", root)
    assert len(pd.read_csv(raw / "train.csv")) == len(pd.read_csv(raw / "files" / "driver_imgs_list.csv"))
    assert (Paths("statefarm", root).download / f"{SF.slug}.zip").read_bytes() == fake.archives[SF.slug]
    assert file_gets(fake) == 1
    n_requests = len(fake.requests)
    download.run(kaggle_params(), "statefarm", root)
    assert len(fake.requests) == n_requests, "a complete download is reused without asking Kaggle"


def test_older_statefarm_layout_from_kaggle(fake, tmp_path):
    import io
    import zipfile

    files = {}
    with zipfile.ZipFile(io.BytesIO(fake.archives[SF.slug])) as zf:
        imgs, rest = io.BytesIO(), {}
        with zipfile.ZipFile(imgs, "w") as inner:
            for info in zf.infolist():
                if info.filename.startswith("imgs/"):
                    inner.writestr(info.filename[len("imgs/"):], zf.read(info))
                else:
                    rest[info.filename] = zf.read(info)
    for name, data in rest.items():
        nested = io.BytesIO()
        with zipfile.ZipFile(nested, "w") as z:
            z.writestr(name, data)
        files[f"{name}.zip"] = nested.getvalue()
    files["imgs.zip"] = imgs.getvalue()
    outer = io.BytesIO()
    with zipfile.ZipFile(outer, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    fake.archives[SF.slug] = outer.getvalue()
    raw = download.run(kaggle_params(), "statefarm", tmp_path / "root")
    assert (raw / "files" / "imgs.zip").exists() and len(pd.read_csv(raw / "test.csv")) > 0


def _download_error(tmp_path, exc=KaggleError) -> str:
    root = tmp_path / "root"
    with pytest.raises(exc) as e:
        download.run(kaggle_params(), "statefarm", root)
    assert not Paths("statefarm", root).raw.exists(), "nothing half-extracted"
    assert "testkey" not in str(e.value), "credentials are never shown"
    return str(e.value)


def test_no_credentials_says_where_they_go(fake, tmp_path, monkeypatch):
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    msg = _download_error(tmp_path)
    assert "No Kaggle credentials" in msg and "~/.kaggle/kaggle.json" in msg and "KAGGLE_KEY" in msg
    assert fake.requests == []


@pytest.mark.parametrize("code, fragments", [
    (401, ["rejected your credentials (HTTP 401)", "kaggle.json"]),
    (403, ["HTTP 403", "not accepted this competition's rules",
           "https://www.kaggle.com/competitions/state-farm-distracted-driver-detection/rules"]),
    (404, ["no competition 'state-farm-distracted-driver-detection' (HTTP 404)"]),
])
def test_http_errors_say_what_to_do(fake, tmp_path, code, fragments):
    fake.fail["download"] = code
    msg = _download_error(tmp_path)
    for fragment in fragments:
        assert fragment in msg


def test_unknown_competition_on_kaggle_is_404(fake, tmp_path):
    del fake.archives[SF.slug]
    assert "HTTP 404" in _download_error(tmp_path)


def test_connection_refused(fake, tmp_path, monkeypatch):
    from kagglesdk import kaggle_env

    fake.stop()
    monkeypatch.setitem(kaggle_env._env_to_endpoint, kaggle_env.KaggleEnv.PROD, fake.url)
    assert "Cannot reach Kaggle" in _download_error(tmp_path)


def test_truncated_download_is_refused_and_deleted(fake, tmp_path):
    fake.fail["download"] = "truncate"
    msg = _download_error(tmp_path, ArchiveError)
    assert "not a readable zip" in msg and "next run fetches it again" in msg
    assert not list(Paths("statefarm", tmp_path / "root").download.glob("*.zip"))
    del fake.fail["download"]
    download.run(kaggle_params(), "statefarm", tmp_path / "root")


def test_demo_run_never_imports_the_kaggle_client(tmp_path):
    code = (
        "import sys\nfrom pathlib import Path\nfrom conftest import tiny_params\nfrom pipeline.stages import download\n"
        f"download.run(tiny_params(), 'dogscats', Path({str(tmp_path)!r}))\n"
        "print(sorted(m for m in sys.modules if m == 'kaggle' or m.startswith(('kaggle.', 'kagglesdk'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def ready_to_submit(root: Path, comp=DC) -> Path:
    """A project with a downloaded archive, a valid submission and the CV metrics (as ensemble leaves them)."""
    params = tiny_params()
    env = make_project(root, params)
    download.run(params, comp.name, root)
    paths = Paths(comp.name, root)
    sample = read_sample(comp, paths.raw)
    probs = pd.DataFrame({"a": 0.3, "b": 0.7}, index=sample.index).to_numpy()
    paths.submission.parent.mkdir(parents=True, exist_ok=True)
    make_submission(comp, sample[comp.id_column], probs).to_csv(paths.submission, index=False)
    write_json(paths.metrics, {"logloss": 0.25, "accuracy": 0.9})
    return env


def test_submit_cli_uploads_exactly_the_file_and_records_the_score(fake, tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    env = {**ready_to_submit(root), **fake.client_env(tmp_path / "home")}
    out = sh([Path(sys.executable).parent / "pipeline", "submit", "dogscats", "--wait", "--poll-seconds", "0.05",
              "--force"], root, env)  # a demo submission: only --force sends it (see the refusal test below)
    assert "public score 0.12345" in out.stdout
    assert len(fake.uploads) == 1
    assert fake.uploads[0]["bytes"] == (root / "submissions" / "dogscats" / "submission.csv").read_bytes()
    scores = pd.read_csv(root / "submissions" / "scores.csv", dtype=str)
    row = scores.iloc[-1]
    assert row["competition"] == "dogscats" and float(row["cv_logloss"]) == 0.25
    assert row["metric"] == "logloss" and float(row["cv_score"]) == 0.25, "the CV score in Kaggle's metric"
    assert float(row["public_score"]) == 0.12345 and float(row["private_score"]) == 0.23456
    assert row["status"] == "COMPLETE" and row["ref"] == str(fake.submissions[0]["ref"])
    head = sh(["git", "rev-parse", "HEAD"], root, env).stdout.strip()
    assert row["commit"].startswith(head)
    assert fake.submissions[0]["description"] == row["message"] and "cv_logloss=0.25000" in row["message"]

    listing = sh([Path(sys.executable).parent / "pipeline", "submissions", "dogscats"], root, env).stdout
    assert "0.12345" in listing and "0.25" in listing and head[:12] in listing


def test_a_demo_submission_is_refused_with_the_reasons_before_anything_is_sent(fake, tmp_path):
    """With real credentials it would spend one of the day's submissions on noise."""
    root = tmp_path / "project"
    root.mkdir()
    env = {**ready_to_submit(root), **fake.client_env(tmp_path / "home")}
    out = sh([Path(sys.executable).parent / "pipeline", "submit", "dogscats"], root, env, ok=False)
    assert out.returncode == 1
    assert "made from the built-in demo data (dogscats.data.source: demo" in out.stderr
    assert "the real competition's test set has 12500" in out.stderr
    assert "older than the params, code or data" in out.stderr and "dvc repro ensemble@dogscats" in out.stderr
    assert "--force" in out.stderr
    assert fake.requests == [] and not (root / "submissions" / "scores.csv").exists()


def test_invalid_submission_is_refused_before_anything_is_sent(fake, tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    ready_to_submit(root)
    path = Paths("dogscats", root).submission
    df = pd.read_csv(path)
    df.iloc[:-1].to_csv(path, index=False)
    with pytest.raises(SubmissionError, match="rows, expected"):
        submit.run("dogscats", root=root)
    assert fake.requests == [] and not (root / "submissions" / "scores.csv").exists()


def test_silent_upload_failure_is_an_error(fake, tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    ready_to_submit(root)
    fake.fail["submit"] = "upload_fail"
    with pytest.raises(KaggleError, match="did not accept the upload"):
        submit.run("dogscats", "try", root=root, force=True)
    assert not (root / "submissions" / "scores.csv").exists()


def test_submit_403_points_to_the_rules(fake, tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    ready_to_submit(root)
    fake.fail["submit"] = 403
    with pytest.raises(KaggleError, match="dogs-vs-cats-redux-kernels-edition/rules"):
        submit.run("dogscats", "try", root=root, force=True)


def test_scoring_error_is_recorded_and_raised(fake, tmp_path, monkeypatch):
    root = tmp_path / "project"
    root.mkdir()
    ready_to_submit(root)
    original = fake._list_submissions

    def failing(slug):
        for s in fake.submissions:
            s.update(status="ERROR", error_description="Submission has 2 columns, expected 3")
        return original(slug)

    monkeypatch.setattr(fake, "_list_submissions", failing)
    with pytest.raises(KaggleError, match="expected 3"):
        submit.run("dogscats", "bad", wait=True, root=root, poll_seconds=0.01, force=True)
    scores = pd.read_csv(root / "submissions" / "scores.csv", dtype=str)
    assert scores["status"].tolist() == ["ERROR"]


def test_dvc_repro_downloads_through_the_real_client(fake, tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    project_env = make_project(root, kaggle_params("dogscats"))
    # the fake's environment, with the project's PATH (this interpreter first) and PYTHONPATH
    env = {**fake.client_env(tmp_path / "home"), **{k: project_env[k] for k in ("PATH", "PYTHONPATH")}}
    sh([sys.executable, "-m", "dvc", "repro", "download@dogscats"], root, env)
    raw = Paths("dogscats", root).raw
    assert len(pd.read_csv(raw / "test.csv")) == tiny_params().comp("dogscats").data.demo.test
    assert ("POST", "DownloadDataFiles") in fake.requests
