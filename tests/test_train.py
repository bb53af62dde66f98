"""Training: resume after SIGTERM, DDP on 2 CPU processes, corrupt shards, MLflow logging."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time

import numpy as np
import pytest
import torch
import webdataset as wds
from conftest import history, resumed_after_sigterm, run_train
from safetensors.torch import load_file

from soloist.config import validate_config
from soloist.io import read_json, write_json
from soloist.train import EXIT_REQUEUE

FRAMES = 300  # 4 s windows at 75 Hz


def write_shards(root, splits=(("train", 2, 12), ("valid", 1, 6)), seed: int = 0) -> None:
    """Shards of synthetic samples whose target depends on the context: (split, shards,
    samples per shard) for each split."""
    rng = np.random.default_rng(seed)
    for split, shards, count in splits:
        (root / split).mkdir(parents=True)
        for s in range(shards):
            with wds.TarWriter(str(root / split / f"shard-{s:06d}.tar")) as tar:
                for i in range(count):
                    context = rng.integers(0, 64, (4, FRAMES), dtype=np.int16)
                    target = (context * 5 + 1) % 64
                    tar.write({"__key__": f"{split}{s}~{i:05d}",
                               "context.npy": context, "target.npy": target.astype(np.int16),
                               "json": {"track": f"t{i}"}})
    codec = {"model": "encodec_24khz", "files": {}, "sample_rate": 24000, "frame_rate": 75.0,
             "codebooks": 4, "cardinality": 64, "weights": "random"}
    per_track = [{"track": f"{split}{s}", "split": split, "duration": count * 4.0}
                 for split, shards, count in splits for s in range(shards)]
    write_json(root / "stats.json", {
        "codebooks": 4, "cardinality": 64, "frame_rate": 75.0, "weights": "random",
        "warning": "RANDOM-INIT WEIGHTS", "codec": codec, "tracks_ok": len(per_track),
        "per_track": per_track,
        "splits": {split: {"tracks": shards, "samples": shards * count}
                   for split, shards, count in splits}})


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    write_shards(root)
    return root


def config(tmp_path, **train) -> dict:
    return validate_config({
        "train": {"steps": 30, "batch_size": 4, "seconds": 2, "workers": 0, "eval_every": 10,
                  "eval_batches": 2, "checkpoint_every": 2, "epoch_batches": 7,
                  "warmup_steps": 3, "device": "cpu"} | train,
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}})


def test_sigterm_checkpoints_and_the_rerun_reproduces_the_losses(tmp_path, shards):
    cfg = config(tmp_path)
    stopped_at, output = resumed_after_sigterm(shards, tmp_path, cfg)
    assert 2 <= stopped_at < 30 and "signal received" in output
    # one MLflow run, continued: every step logged once
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=cfg["mlflow"]["tracking_uri"])
    run_id = read_json(tmp_path / "cut/train.json")["mlflow_run_id"]
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    assert sorted(steps) == list(range(1, 31))


def test_sigterm_to_every_process_with_loader_workers_still_checkpoints(tmp_path, shards):
    """SLURM signals every process of a job step, the data loader workers too."""
    proc = run_train(shards, tmp_path / "step", config(tmp_path, workers=1, steps=200),
                     start_new_session=True)
    last = tmp_path / "step/checkpoints/last.pt"
    while not last.exists() and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGTERM)
    output = proc.communicate()[0]
    assert proc.returncode == EXIT_REQUEUE, output
    assert "signal received: checkpoint at step" in output
    assert 2 <= len(history(tmp_path / "step")) < 200


def test_two_process_ddp_on_cpu_keeps_replicas_identical(tmp_path, shards):
    launcher = (sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node=2")
    proc = run_train(shards, tmp_path / "ddp", config(tmp_path, steps=4), *launcher)
    output = proc.communicate()[0]
    assert proc.returncode == 0, output
    assert "parameters identical across 2 ranks" in output
    assert read_json(tmp_path / "ddp/train.json")["world_size"] == 2


def test_corrupt_shard_and_sample_are_skipped_and_counted(tmp_path, shards):
    bad = tmp_path / "bad"
    shutil.copytree(shards, bad)
    (bad / "train/shard-000002.tar").write_bytes(os.urandom(5000))  # not a tar at all
    with wds.TarWriter(str(bad / "train/shard-000003.tar")) as tar:
        tar.write({"__key__": "broken~00000", "context.npy": b"not npy",
                   "target.npy": b"not npy", "json": b"{}"})
    proc = run_train(bad, tmp_path / "out", config(tmp_path, steps=12))
    output = proc.communicate()[0]
    assert proc.returncode == 0, output
    skipped = read_json(tmp_path / "out/train.json")["skipped_samples"]
    assert skipped > 0 and f"skipped {skipped} corrupt samples or shards" in output


def test_mlflow_run_has_params_metrics_and_artifacts(tmp_path, shards):
    from mlflow.tracking import MlflowClient

    cfg = config(tmp_path, steps=10)
    proc = run_train(shards, tmp_path / "out", cfg)
    assert proc.wait() == 0, proc.stdout.read()
    client = MlflowClient(tracking_uri=cfg["mlflow"]["tracking_uri"])
    run = client.get_run(read_json(tmp_path / "out/train.json")["mlflow_run_id"])
    assert run.data.params["train.steps"] == "10" and run.data.params["clip.seconds"] == "10"
    for key in ("train/loss", "train/loss_cb3", "val/loss", "val/loss_cb0", "lr", "grad_norm",
                "tokens_per_s", "step_time"):
        assert key in run.data.metrics, key
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 10
    assert "loss.png" in [a.path for a in client.list_artifacts(run.info.run_id)]
    folder = json.loads((tmp_path / "out/config.json").read_text())
    assert folder["model"]["card"] == 64 and folder["model"]["max_frames"] == 2 * 75
    assert folder["codec"]["model"] == "encodec_24khz" and folder["window_seconds"] == 2
    assert folder["data"]["splits"]["train"] == {"tracks": 2, "windows": 24, "hours": 0.0267}
    assert folder["training"]["validated"] is True and folder["training"]["best_val_loss"] > 0
    assert read_json(tmp_path / "out/train.json")["validated"] is True


def test_changed_data_starts_a_new_training(tmp_path, shards):
    cfg = config(tmp_path, steps=4)
    assert run_train(shards, tmp_path / "out", cfg).wait() == 0
    first_run = read_json(tmp_path / "out/train.json")["mlflow_run_id"]
    other = tmp_path / "other"
    write_shards(other, seed=1)
    proc = run_train(other, tmp_path / "out", cfg | {"train": cfg["train"] | {"steps": 6}})
    output = proc.communicate()[0]
    assert proc.returncode == 0, output
    assert "starting a new training" in output and "resuming" not in output
    assert len(history(tmp_path / "out")) == 6
    assert read_json(tmp_path / "out/train.json")["mlflow_run_id"] != first_run
    # same data, more steps: continues
    proc = run_train(other, tmp_path / "out", cfg | {"train": cfg["train"] | {"steps": 8}})
    assert "resuming from step 6" in proc.communicate()[0] and proc.returncode == 0


def test_early_stopping_and_ema_export(tmp_path, shards):
    # lr 0: the validation loss never improves after the first evaluation
    proc = run_train(shards, tmp_path / "flat", config(tmp_path, lr=0.0, min_lr=0.0, steps=30,
                                                         eval_every=2, patience=2))
    output = proc.communicate()[0]
    assert proc.returncode == 0, output
    assert "early stop" in output and read_json(tmp_path / "flat/train.json")["steps"] == 6

    proc = run_train(shards, tmp_path / "ema", config(tmp_path, steps=6, ema=0.9, eval_every=3))
    assert proc.wait() == 0, proc.stdout.read()
    exported = load_file(tmp_path / "ema/model.safetensors")
    best = torch.load(tmp_path / "ema/checkpoints/best.pt", weights_only=True)
    name = "heads.weight"
    assert not torch.equal(exported[name], best["model"][name])  # the EMA, not the raw weights
    index = [n for n in best["model"] if n in exported].index(name)
    assert torch.equal(exported[name], best["ema"][index])


def test_without_valid_shards_the_model_is_the_last_checkpoint(tmp_path):
    from collections import Counter

    from soloist.model import Soloist
    from soloist.publish import model_card

    shards = tmp_path / "shards"
    write_shards(shards, splits=(("train", 1, 12), ("valid", 0, 0)))  # valid: no tar
    proc = run_train(shards, tmp_path / "out", config(tmp_path, steps=4, eval_every=2,
                                                        patience=1))
    output = proc.communicate()[0]
    assert proc.returncode == 0, output
    assert (f"no validation shards in {shards / 'valid'}: no validation, early stopping off; "
            "model.safetensors will be the last checkpoint") in output
    summary = read_json(tmp_path / "out/train.json")
    assert summary["validated"] is False and summary["best_val_loss"] is None
    assert summary["steps"] == 4  # patience 1 did not stop it
    assert "Infinity" not in (tmp_path / "out/train.json").read_text()
    model = Soloist.from_pretrained(tmp_path / "out")
    assert model.info["training"] | {"preset": None} == {
        "preset": None, "step": 4, "checkpoint": "last.pt", "validated": False,
        "best_val_loss": None}
    assert "no validation split" in model_card(model, {}, {}, Counter(), [], None)
