"""`layerprobe submit-head`: the Snakemake controller submitted as a job with submitit.

- local executor (always runs): a dry-run head of the demo config completes and logs the DAG;
  a failing head is reported as a failure;
- the local SLURM (fixture `slurm`): the head runs as a SLURM job with the default long, 1-CPU,
  low-RAM request, and from inside it Snakemake submits a rule's job to SLURM as well.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from layerprobe import submit
from tests.conftest import BIN, ROOT, copy_repo
from tests.slurm_cluster import memory_mb, minutes, portable_profile_args, slurm  # noqa: F401  (the fixture)


def submit_head(workdir: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([str(BIN / "layerprobe"), "submit-head", *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=timeout)


def submitted(proc: subprocess.CompletedProcess, cluster: str) -> tuple[str, Path]:
    match = re.search(rf"Submitted the Snakemake controller as {cluster} job (\S+)", proc.stdout)
    assert match, f"no submission line:\n{proc.stdout}\n{proc.stderr}"
    log = re.search(r"log:\s+(\S+)", proc.stdout)
    assert log, proc.stdout
    return match.group(1), Path(log.group(1))


def test_command_keeps_targets_out_of_configfile():
    cmd = submit.snakemake_command("profiles/slurm", ["config/a.yaml", "config/b.yaml"],
                                   ["-n", "results/report.html"])
    assert cmd[1:] == ["-m", "snakemake", "-n", "results/report.html", "--profile", "profiles/slurm",
                       "--configfile", "config/a.yaml", "config/b.yaml"]
    args = submit.parse_args(["--partition", "cpu", "--", "--keep-going", "all"])
    assert (args.time_min, args.mem_gb, args.cpus, args.folder) == (3 * 24 * 60, 2.0, 1, "results/logs/head")
    assert args.partition == "cpu" and args.snakemake_args == ["--keep-going", "all"]


def test_local_head_dry_run_completes_and_logs_the_dag(tmp_path):
    work = copy_repo(tmp_path / "repo")
    proc = submit_head(work, "--cluster", "local", "--wait", "--profile", "profiles/local",
                       "--configfile", "config/demo.yaml", "--", "-n")
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    job_id, log = submitted(proc, "local")
    assert log.parent == work / "results/logs/head" and log.is_file()
    text = log.read_text()
    assert f"cwd {work}" in text
    assert "Job stats:" in text and "This was a dry-run" in text
    for rule in ("synthetic_dataset", "preprocess", "extract", "finalize_store", "probe", "report"):
        assert re.search(rf"^{rule}\s+\d+\s*$", text, re.M), f"{rule} missing from the DAG in {log}:\n{text[-3000:]}"
    assert "snakemake exited with 0" in text
    assert (log.parent / f"{job_id}_0_result.pkl").is_file()


def test_local_head_failure_is_reported(tmp_path):
    work = copy_repo(tmp_path / "repo")
    proc = submit_head(work, "--cluster", "local", "--wait", "--profile", "profiles/local",
                       "--configfile", "config/demo.yaml", "--", "-n", "results/no_such_target.txt")
    assert proc.returncode == 1, f"{proc.stdout}\n{proc.stderr}"
    assert "snakemake exited with 1" in proc.stderr


def test_slurm_head_runs_as_a_small_long_job_and_submits_rule_jobs(slurm, tmp_path):  # noqa: F811
    work = copy_repo(tmp_path / "repo")
    target = "results/dataset/synthetic.json"
    proc = submit_head(work, "--cluster", "slurm", "--wait", "--profile", "profiles/slurm",
                       "--configfile", "config/demo.yaml", "--", target, "--latency-wait", "5",
                       "--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "2",
                       "--slurm-keep-successful-logs", *portable_profile_args(ROOT / "profiles/slurm/config.yaml"),
                       timeout=300)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    job_id, log = submitted(proc, "slurm")

    head = slurm.wait_done(job_id, timeout=60)  # the result file is written just before the job ends
    assert head["JobState"] == "COMPLETED" and head["JobName"] == "layerprobe-head", head
    assert head["BatchHost"] == slurm.host and head["Partition"] == slurm.partition, head
    assert int(head["NumCPUs"]) == 1, head
    assert memory_mb(head["MinMemoryNode"]) == 2048, head
    assert minutes(head["TimeLimit"]) == submit.DEFAULT_TIME_MIN, head
    assert Path(head["StdOut"]) == log and log.is_file(), head
    assert "snakemake exited with 0" in log.read_text()

    # The controller, inside its SLURM job, submitted the rule's job to SLURM too.
    child_logs = list((work / ".snakemake/slurm_logs/rule_synthetic_dataset").glob("*.log"))
    assert len(child_logs) == 1, child_logs
    child = slurm.job(child_logs[0].stem)
    assert child["JobState"] == "COMPLETED" and int(child_logs[0].stem) > int(job_id), child
    assert (work / target).is_file()
