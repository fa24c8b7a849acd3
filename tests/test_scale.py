"""The paths that make real-size runs fast give the results of the plain ones: DataLoader workers in the features
stage, finetuning resumed after a kill, and data-parallel finetuning over several processes (torchrun, gloo)."""

import os
import signal
import shutil
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import yaml
import torch
from safetensors.numpy import load_file
from safetensors.torch import load_file as load_torch

from conftest import REPO, sh, tiny_params
from pipeline.stages import features, finetune
from pipeline.data.datasets import SeededRows, ShardedRows
from pipeline.training.engine import predict
from pipeline.core.paths import Paths
from test_honest_scores import COMP, copy_upstream, probabilities


def test_features_do_not_depend_on_the_number_of_loader_workers(pipeline_run, tmp_path, monkeypatch):
    """Plain and augmented features with two worker processes are those computed with none (each image's
    augmentation is seeded per row in the main process)."""
    root, _, _ = pipeline_run
    paths = copy_upstream(root, tmp_path)
    params = tiny_params(**{f"{COMP}.speed.features_workers": 2})
    assert tiny_params().comp(COMP).speed.features_workers == 0
    monkeypatch.chdir(tmp_path)
    features.run(params, COMP, "main", tmp_path)
    for name in ("train.npy", "test.npy", "train_aug.npy"):
        assert np.array_equal(np.load(paths.features / name), np.load(Paths(COMP, root).features / name)), name


def test_features_do_not_depend_on_the_inference_batch_size(pipeline_run, tmp_path, monkeypatch):
    """`speed.features_batch_size` is untracked by DVC, so it must not change the features: the backbone is in
    eval mode, each row computed alone (only the arithmetic's order may differ, within float16's rounding)."""
    root, _, _ = pipeline_run
    paths = copy_upstream(root, tmp_path)
    assert tiny_params().comp(COMP).speed.features_batch_size == 16
    monkeypatch.chdir(tmp_path)
    features.run(tiny_params(**{f"{COMP}.speed.features_batch_size": 5}), COMP, "main", tmp_path)
    for name in ("train.npy", "test.npy", "train_aug.npy"):
        np.testing.assert_allclose(np.load(paths.features / name).astype(np.float32),
                                   np.load(Paths(COMP, root).features / name).astype(np.float32),
                                   rtol=2e-3, atol=2e-3, err_msg=name)


def test_sharded_rows_give_each_step_the_whole_batch_with_the_same_seeds():
    n, batch, world = 23, 6, 3
    single = list(SeededRows(n, (0, 1), shuffle=True))
    shards = [list(ShardedRows(SeededRows(n, (0, 1), shuffle=True), batch, r, world, drop_last=True))
              for r in range(world)]
    per = batch // world
    assert {len(s) for s in shards} == {per * (n // batch)}, "every process takes the same number of steps"
    for step in range(n // batch):
        together = sorted(sum((s[step * per : (step + 1) * per] for s in shards), []))
        assert together == sorted(single[step * batch : (step + 1) * batch]), "the very batch, seeds included"
    # no drop_last (a fold smaller than a batch): a last batch shares out only while each process gets 2 rows
    assert [len(ShardedRows(SeededRows(8, 0, shuffle=True), 8, r, 4, drop_last=False)) for r in range(4)] == [2] * 4
    assert len(ShardedRows(SeededRows(7, 0, shuffle=True), 8, 0, 4, drop_last=False)) == 0


def _project(root, src_root, params) -> dict:
    """A stage-ready folder (upstream outputs of the fixture, params.yaml) and the environment to run it."""
    paths = copy_upstream(src_root, root)
    shutil.copytree(Paths(COMP, src_root).fold_model("head", 0), paths.fold_model("head", 0))
    (root / "params.yaml").write_text(yaml.safe_dump(params.to_dict(), sort_keys=False))
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TQDM_DISABLE="1")


def test_an_interrupted_finetune_resumes_from_its_last_epoch_and_ends_as_an_uninterrupted_run(pipeline_run, tmp_path):
    """Ctrl-C (SIGINT, as a terminal sends it to `dvc repro` and its stage) stops the stage with one line, no
    traceback; the next run resumes from the checkpoint and ends bit for bit where an uninterrupted one does."""
    src, _, _ = pipeline_run
    params = tiny_params(**{f"{COMP}.finetune.epochs": 8})
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    stage = [sys.executable, "-m", "pipeline.stages.finetune", COMP, "main", "0"]  # every run alike: one thread each
    env = _project(killed, src, params)
    checkpoint = Paths(COMP, killed).fold_model("finetune", 0).with_name(".fold0.checkpoint.pt")
    with open(tmp_path / "stderr.txt", "w") as err:
        # as a terminal's Ctrl-C finds it: SIGINT handled (a shell's background job, e.g. CI's, inherits it ignored)
        proc = subprocess.Popen(stage, cwd=killed, env=env, stdout=subprocess.DEVNULL, stderr=err,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.time() + 300
        while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        assert checkpoint.exists(), (tmp_path / "stderr.txt").read_text()[-2000:]
        proc.send_signal(signal.SIGINT)
        returned = proc.wait()
    stderr = (tmp_path / "stderr.txt").read_text()
    assert returned == 130, f"the run ended before it could be interrupted: {returned}\n{stderr[-2000:]}"
    assert f"interrupted: finetune@{COMP}-main-0 stopped" in stderr and "Traceback" not in stderr, stderr[-2000:]
    assert not Paths(COMP, killed).fold_model("finetune", 0).exists()

    resumed = sh(stage, killed, env).stdout
    assert "resuming after epoch" in resumed and not checkpoint.exists(), "removed once the outputs are written"
    sh(stage, whole, _project(whole, src, params))
    out = {name: Paths(COMP, name).fold_model("finetune", 0) for name in (killed, whole)}
    assert len(pd.read_json(out[killed] / "params.json", typ="series")["history"]) == 9
    a, b = (load_file(out[name] / "model.safetensors") for name in (killed, whole))
    assert all(np.array_equal(a[k], b[k]) for k in a), "the weights of an uninterrupted run, bit for bit"
    np.testing.assert_array_equal(probabilities(out[killed]), probabilities(out[whole]))
    np.testing.assert_array_equal(np.load(out[killed] / "test.npy"), np.load(out[whole] / "test.npy"))


def test_finetune_data_parallel_over_two_processes_writes_what_one_process_writes(pipeline_run, tmp_path):
    """`torchrun --nproc-per-node 2` on CPUs (gloo): rank 0 writes the same files as a single-process run, with
    predictions for the same rows in the same order, close to the single run's (each step sees the same images
    with the same augmentations; batch norm statistics and dropout masks are per process, so not bit for bit)."""
    src, params, _ = pipeline_run
    env = _project(tmp_path, src, params)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "-m", "pipeline.stages.finetune", COMP, "main", "0"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("finetune@statefarm-main-0:") == 1, "one report, from rank 0"
    single, parallel = Paths(COMP, src).fold_model("finetune", 0), Paths(COMP, tmp_path).fold_model("finetune", 0)
    assert sorted(p.name for p in parallel.iterdir()) == sorted(p.name for p in single.iterdir())
    one, two = (pd.read_csv(d / "oof.csv") for d in (single, parallel))
    assert list(one["id"]) == list(two["id"]) and list(one["label"]) == list(two["label"])
    info = pd.read_json(parallel / "params.json", typ="series")
    assert info["processes"] == 2
    # Epoch 0 is the same network on the same rows: the shared-out validation predictions, gathered, must give
    # the single process's score exactly (order and padding of the shares).
    history = {name: pd.read_json(d / "params.json", typ="series")["history"] for name, d in
               (("one", single), ("two", parallel))}
    assert history["two"][0]["logloss"] == pytest.approx(history["one"][0]["logloss"], abs=1e-5)
    # After training: the predictions written are the saved network's, row for row (batch norm statistics
    # synced to rank 0's before predicting, shares gathered in order)
    device = torch.device("cpu")
    _, _, (_, val_loader, _), network, _ = finetune.setup(params, COMP, "main", 0, Paths(COMP, tmp_path), device)
    network.load_state_dict(load_torch(parallel / "model.safetensors"))
    again = predict(network, val_loader, device, params.model(COMP, "main").finetune.tta)
    np.testing.assert_allclose(again, probabilities(parallel), atol=1e-5)
    # Then both train alike (per-process batch statistics and dropout: close, not equal; the tiny random net
    # learns little, so only its scores are compared)
    assert history["two"][-1]["logloss"] == pytest.approx(history["one"][-1]["logloss"], abs=0.1)
    assert history["two"][-1]["train_loss"] == pytest.approx(history["one"][-1]["train_loss"], abs=0.2)
    start = probabilities(Paths(COMP, src).fold_model("head", 0))
    assert np.abs(probabilities(parallel) - start).mean() > 0.01, "it trained"
    assert np.load(parallel / "test.npy").shape == np.load(single / "test.npy").shape


def test_synchronised_batch_norm_on_cpu_processes_says_it_needs_gpus(pipeline_run, tmp_path):
    """torch synchronises batch norm on CUDA only: two CPU processes with `finetune.sync_bn` stop at the start
    with one line saying so, not with torch's error from inside the first step."""
    src, _, _ = pipeline_run
    env = _project(tmp_path, src, tiny_params(**{f"{COMP}.finetune.sync_bn": True}))
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "-m", "pipeline.stages.finetune", COMP, "main", "0"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert f"error: {COMP}.finetune.sync_bn: true needs GPUs" in result.stderr  # each rank's one line
    assert "ConfigError" not in result.stderr, "no traceback of ours (torchrun still prints its own)"
