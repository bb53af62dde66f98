"""profiles/slurm on a real (one-node, localhost) SLURM cluster: the demo DAG as SLURM jobs,
training on 2 ranks under srun, and a signalled training that resumes after a restart."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, set_config, snakemake, with_weights, workflow_copy
from slurm_cluster import ACCOUNT, Cluster, missing

from soloist.io import read_json

# Short status polling: the cluster answers at once, the plugin's default waits 40 s.
FAST = ("--slurm-init-seconds-before-status-checks", "1", "--slurm-keep-successful-logs")
# The songs go through Demucs (their true stems would skip separation's GPU job)
SMALL = {"tracks": "config/slurm.tsv", "weights": "random",
         "demo": {"seconds": 6, "stems": False},
         "clip": {"seconds": 2, "hop": 1},
         "train": {"steps": 24, "batch_size": 4, "seconds": 2, "workers": 1, "eval_every": 8,
                   "eval_batches": 2, "checkpoint_every": 4, "epoch_batches": 8,
                   "warmup_steps": 2},
         "evaluate": {"examples": 1, "batches": 1, "seconds": 2},
         "slurm": {"account": ACCOUNT, "runtime": {"train": "1d"}}}
SHEET = "track\tsource\tsplit\nsong1\tdemo:song1\ttrain\nsong2\tdemo:song2\ttest\n"
GPU_RULES = ("separate", "tokenize", "train")  # on slurm.gpu_partition with a GPU each


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The local cluster; CI runs as root with install.sh's packages, so it runs there."""
    if missing():
        pytest.skip(f"local SLURM cluster: {missing()}")
    c = Cluster(tmp_path_factory.mktemp("slurm"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


def small_workflow(workdir: Path, weights: Path) -> Path:
    workflow_copy(workdir)
    shutil.copy(ROOT / "slurm", workdir / "slurm", follow_symlinks=False)
    (workdir / "config/slurm.tsv").write_text(SHEET)
    set_config(workdir, SMALL)
    with_weights(workdir, weights)
    return workdir


def sacct(cluster: Cluster, since: str, *fields: str) -> list[dict[str, str]]:
    """Jobs (not steps) submitted since ``since``, one dict per job."""
    out = cluster.run("sacct", "-X", "-n", "-P", "-S", since, "-o", ",".join(fields),
                      check=True).stdout
    return [dict(zip(fields, line.split("|"), strict=True)) for line in out.splitlines()]


def rule_of(comment: str) -> str:
    """The rule name in the plugin's job comment, rule_<name>[_wildcards_<values>]."""
    return re.fullmatch(r"rule_(.+?)(?:_wildcards_.*)?", comment)[1]


def local_rules(workdir: Path) -> set[str]:
    names = set()
    for path in [workdir / "Snakefile", *sorted((workdir / "rules").glob("*.smk"))]:
        for block in re.findall(r"^localrules:(.*?)(?=^\S|\Z)", path.read_text(), re.M | re.S):
            names |= set(re.findall(r"\w+", block))
    return names


def job_counts(output: str) -> dict[str, int]:
    """Rule -> jobs, from the 'Job stats' table Snakemake prints first."""
    table = output.split("Job stats:", 1)[1].splitlines()[3:]
    counts = {}
    for line in table:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


def start(workdir: Path, *args: str) -> subprocess.Popen:
    with open(workdir / "snakemake.log", "w") as out:
        return subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "2", *args],
                                cwd=workdir, stdout=out, stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory, random_weights):
    """The small demo DAG through ``--profile profiles/slurm``. The train job gets SIGTERM,
    as before a time limit, once it has written a checkpoint; Snakemake resubmits it.
    Meanwhile (the SLURM run mostly waits) the same dataset is made by a local run."""
    local = small_workflow(tmp_path_factory.mktemp("local_run"), random_weights)
    local_proc = start(local, "shard")
    workdir = small_workflow(tmp_path_factory.mktemp("slurm_run"), random_weights)
    since = datetime.now().strftime("%Y-%m-%dT%H:%M:%S")
    log = workdir / "snakemake.log"
    proc = start(workdir, "--profile", "profiles/slurm", *FAST)
    try:
        checkpoint = workdir / "results/train/checkpoints/last.pt"
        while not checkpoint.exists() and proc.poll() is None:
            time.sleep(0.1)
        assert proc.poll() is None, f"snakemake ended before training:\n{log.read_text()}"
        queue = cluster.run("squeue", "-h", "-o", "%i %k", check=True).stdout
        (train,) = [line.split()[0] for line in queue.splitlines() if line.endswith(" rule_train")]
        # as --signal=TERM@<seconds> does: every process of the job's steps, not the batch shell
        cluster.run("scancel", "--signal=TERM", train, check=True)
        proc.wait()
        local_proc.wait()
    finally:
        for p in (proc, local_proc):
            if p.poll() is None:
                p.kill()
    output = log.read_text()
    assert proc.returncode == 0, output
    assert local_proc.returncode == 0, (local / "snakemake.log").read_text()
    return workdir, since, output, train, local


def test_every_remote_rule_ran_as_a_completed_slurm_job(cluster, slurm_run):
    workdir, since, output, *_ = slurm_run
    jobs = sacct(cluster, since, "JobID", "State", "Comment", "Partition", "AllocTRES",
                 "Account", "Timelimit")
    local = local_rules(workdir) | {"all"}
    expected = {rule: n for rule, n in job_counts(output).items() if rule not in local}
    assert {"separate", "tokenize", "train", "evaluate"} <= set(expected)
    completed = [j for j in jobs if j["State"] == "COMPLETED"]
    done = {rule: sum(rule_of(j["Comment"]) == rule for j in completed) for rule in expected}
    assert done == expected
    assert not {rule_of(j["Comment"]) for j in jobs} & local, "local rules stay local"
    # the config's slurm section reached every job (rules/common.smk -> profiles/slurm)
    assert {j["Account"] for j in jobs} == {ACCOUNT}
    assert {j["Timelimit"] for j in jobs if j["Comment"] == "rule_train"} == {"1-00:00:00"}
    assert {j["Timelimit"] for j in jobs if j["Comment"].startswith("rule_separate")} == \
        {"04:00:00"}
    for job in completed:
        if rule_of(job["Comment"]) in GPU_RULES:
            assert job["Partition"] == "gpu" and "gres/gpu=1" in job["AllocTRES"], job
        else:
            assert job["Partition"] == "cpu" and "gres/gpu" not in job["AllocTRES"], job


def test_outputs_equal_a_local_run(slurm_run):
    workdir, *_, local = slurm_run
    ours, theirs = local / "results/shards", workdir / "results/shards"
    files = sorted(p.relative_to(ours) for p in ours.rglob("*") if p.suffix in (".tar", ".parquet"))
    assert Path("manifest.parquet") in files and len(files) > 1
    for name in files:
        assert (ours / name).read_bytes() == (theirs / name).read_bytes(), name


def test_signalled_training_checkpoints_and_the_restart_resumes(cluster, slurm_run):
    workdir, since, _, signalled, _ = slurm_run
    trains = [j for j in sacct(cluster, since, "JobID", "State", "Comment")
              if j["Comment"] == "rule_train"]
    assert [j["State"] for j in trains] == ["FAILED", "COMPLETED"]
    assert trains[0]["JobID"] == signalled
    first = (workdir / f".snakemake/slurm_logs/rule_train/{signalled}.log").read_text()
    stopped = re.search(r"signal received: checkpoint at step (\d+) saved", first)
    assert stopped, first
    step = int(stopped[1])
    assert SMALL["train"]["checkpoint_every"] <= step < SMALL["train"]["steps"]
    second = (workdir / "results/logs/train/train.log").read_text()
    assert f"resuming from step {step}" in second
    assert read_json(workdir / "results/train/train.json")["steps"] == SMALL["train"]["steps"]


def test_two_ranks_one_torchrun_per_node_under_srun(cluster, tmp_path, random_weights):
    """train.nodes: 2 as on a real cluster: one srun task per node, each a torchrun with
    train.gpus ranks. The overlay only squeezes both "nodes" onto the one local node."""
    from test_train import write_shards

    workdir = small_workflow(tmp_path, random_weights)
    shards = workdir / "results/shards"
    write_shards(shards, (("train", 1, 12), ("valid", 1, 4)))
    (shards / "manifest.parquet").touch()
    set_config(workdir, {"train": {"nodes": 2, "gpus": 1, "steps": 4, "workers": 0}})
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    profile["set-resources"]["train"]["nodes"] = 1
    (tmp_path / "overlay").mkdir()
    (tmp_path / "overlay/config.yaml").write_text(yaml.safe_dump(profile))
    since = datetime.now().strftime("%Y-%m-%dT%H:%M:%S")
    snakemake(workdir, "results/train/model.safetensors", "--profile", str(tmp_path / "overlay"),
              *FAST, "--allowed-rules", "train")
    summary = read_json(workdir / "results/train/train.json")
    assert summary["world_size"] == 2 and summary["steps"] == 4
    assert "parameters identical across 2 ranks" in \
        (workdir / "results/logs/train/train.log").read_text()
    (job,) = sacct(cluster, since, "JobID", "State", "Comment")
    assert job["State"] == "COMPLETED" and job["Comment"] == "rule_train"
    steps = cluster.run("sacct", "-n", "-P", "-j", f"{job['JobID']}.0", "-o", "NTasks,State",
                        check=True).stdout.split()
    assert steps == ["2|COMPLETED"], steps  # the srun step: one torchrun agent per task


@pytest.mark.parametrize("spelling", ["slurm", "profiles/slurm"])
def test_profile_resolves_by_name_and_by_path(tmp_path, spelling):
    workflow_copy(tmp_path)
    shutil.copy(ROOT / "slurm", tmp_path / "slurm", follow_symlinks=False)
    home = str(tmp_path / "home")  # no profile of the user's in the way
    env = os.environ | {"HOME": home, "XDG_CONFIG_HOME": home}
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--profile", spelling,
                           "--config", "weights=random"], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert f"Using profiles {spelling} " in output
    # rule all has no message, so the dry run shows its resources: the profile's defaults
    assert re.search(r"resources: .*slurm_partition=cpu, runtime=60", output), output
