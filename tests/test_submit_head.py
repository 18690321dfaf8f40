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
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from layerprobe.cli import submit_head as submit
from tests.conftest import BIN, ROOT, copy_repo, snakemake
from tests.slurm_cluster import memory_mb, minutes, portable_profile_args, scontrol_job, slurm  # noqa: F401


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
    assert (args.time_min, args.mem_gb, args.cpus, args.folder) == (3 * 24 * 60, 2.0, 1, None)
    # the head's log folder: logs/head under the config's results root
    assert submit.head_folder([], ROOT) == "results/logs/head"
    assert submit.head_folder(["config/demo.yaml"], ROOT) == "results/demo/logs/head"
    assert args.partition == "cpu" and args.snakemake_args == ["--keep-going", "all"]


def test_local_head_dry_run_completes_and_logs_the_dag(tmp_path):
    work = copy_repo(tmp_path / "repo")
    proc = submit_head(work, "--cluster", "local", "--wait", "--profile", "profiles/local",
                       "--configfile", "config/demo.yaml", "--", "-n")
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    job_id, log = submitted(proc, "local")
    assert log.parent == work / "results/demo/logs/head" and log.is_file()
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
                       "--configfile", "config/demo.yaml", "--", "-n", "results/demo/no_such_target.txt")
    assert proc.returncode == 1, f"{proc.stdout}\n{proc.stderr}"
    assert "snakemake exited with 1" in proc.stderr


def test_slurm_head_runs_as_a_small_long_job_and_submits_rule_jobs(slurm, tmp_path):  # noqa: F811
    work = copy_repo(tmp_path / "repo")
    target = "results/demo/dataset/synthetic.json"
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


def test_the_head_follows_a_limit_changed_while_it_runs(monkeypatch):
    limits = iter([1000.0, 400.0])  # squeue's answers: the limit is cut while the head runs
    clock = [0.0]
    monkeypatch.setattr(submit, "job_deadline", lambda job_id: next(limits))
    monkeypatch.setattr(submit.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(submit.time, "time", lambda: clock[0])
    deadline = submit.Deadline("7")
    assert deadline.seconds_left() == 1000
    clock[0] = submit.DEADLINE_REFRESH_S - 1
    assert deadline.seconds_left() == 1000 - clock[0]  # not asked again yet
    clock[0] = submit.DEADLINE_REFRESH_S
    assert deadline.seconds_left() == 400 - clock[0]
    assert submit.Deadline(None).seconds_left() is None


def test_waiting_on_a_head_that_ended_without_a_result_fails_instead_of_hanging(monkeypatch, tmp_path):
    """A requeued head killed before its controller ran leaves no result pickle; submitit's
    job.result() would then poll sacct, absent without accounting, forever."""
    paths = SimpleNamespace(result_pickle=tmp_path / "133_result.pkl", stdout=tmp_path / "out", stderr=tmp_path / "err")
    job = SimpleNamespace(job_id="133", paths=paths, result=lambda: pytest.fail("submitit's result() was called"))
    monkeypatch.setattr(submit, "slurm_state", lambda job_id: "FAILED")
    monkeypatch.setattr(submit.time, "sleep", lambda s: None)
    with pytest.raises(RuntimeError, match="head job 133 ended \\(FAILED\\) without a result"):
        submit.wait_for(job, "slurm")


def test_time_left_parsing():
    assert submit.parse_time_left("1-02:03:04") == ((24 + 2) * 60 + 3) * 60 + 4
    assert submit.parse_time_left("03:04") == 184 and submit.parse_time_left("UNLIMITED") is None


def _stale_lock(work: Path) -> None:
    """A real stale lock: a snakemake SIGKILLed while it holds its directory lock."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([str(BIN / "snakemake"), "results/demo/data/64px.json", "--cores", "1", "--configfile",
                             "config/demo.yaml"], cwd=work, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    locks = work / ".snakemake/locks"
    deadline = time.monotonic() + 120
    while not (locks.is_dir() and any(locks.iterdir())) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert locks.is_dir() and any(locks.iterdir()), "snakemake never took its lock"


QUICK = ["--latency-wait", "5", "--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks",
         "2"]


def test_slurm_head_clears_a_stale_lock_and_refuses_beside_a_live_head(slurm, tmp_path):  # noqa: F811
    work = copy_repo(tmp_path / "repo")
    _stale_lock(work)
    target = "results/demo/dataset/synthetic.json"
    proc = submit_head(work, "--cluster", "slurm", "--wait", "--profile", "profiles/local", "--configfile",
                       "config/demo.yaml", "--", target, timeout=300)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    job_id, log = submitted(proc, "slurm")
    text = log.read_text()
    assert "removing a stale lock" in text and "snakemake exited with 0" in text, text[-3000:]
    locks = work / ".snakemake/locks"
    assert (work / target).is_file() and not (locks.is_dir() and any(locks.iterdir()))
    # A live head of this directory (stand-in: a sleeping job with the head's name and directory).
    live = subprocess.run(["sbatch", "--parsable", "--job-name=layerprobe-head", f"--chdir={work}",
                           f"--output={tmp_path}/live.out", "--wrap", "sleep 300"],
                          capture_output=True, text=True, check=True).stdout.strip()
    try:
        slurm.wait_running(live)
        proc = submit_head(work, "--cluster", "slurm", "--configfile", "config/demo.yaml", "--", target)
        assert proc.returncode == 2 and f"head job(s) {live}" in proc.stderr, f"{proc.stdout}\n{proc.stderr}"
        _stale_lock(work)
        with pytest.raises(submit.LiveHead, match=f"head job\\(s\\) {live} of"):
            submit.clear_stale_lock(work, "layerprobe-head", ["snakemake"], own_job="0")
        assert any((work / ".snakemake/locks").iterdir())  # refused: the lock is left alone
    finally:
        subprocess.run(["scancel", live], check=False)


def _release_requeued(job_id: str, stop: threading.Event) -> None:
    """Test speed-up only: SLURM holds a requeued job for ~2 min (BeginTime) before it may start
    again; on a cluster that is noise beside a days-long head, here it would double the test."""
    while not stop.wait(1):
        info = scontrol_job(job_id)
        if info.get("JobState") == "PENDING" and info.get("Reason") == "BeginTime":
            # Not at once: slurmd revokes the first run's credential at the requeue, and a launch of
            # the same job id within that second is killed ("Job credential revoked"), as seen here.
            stop.wait(5)
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=False)


REQUEUE_EPOCHS = 60  # the probe outlasts the head's next look at its limit (DEADLINE_REFRESH_S) after a checkpoint


def _shorten_after_checkpoint(job_id: str, checkpoint: Path, stop: threading.Event) -> None:
    """Take 3 minutes off the head's limit once the probe has a checkpoint to resume from."""
    while not stop.wait(0.5):
        if checkpoint.is_file():
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "TimeLimit=-3"], check=True)
            return


def test_slurm_head_requeues_itself_before_its_time_limit_and_finishes(slurm, tmp_path):  # noqa: F811
    """A head with a 10-minute limit, told to stop 7 min before it, runs; once the probe's SLURM job
    has written its first checkpoint the test takes 3 min off the head's limit (scontrol update,
    as an admin may), so the head, which re-reads its limit from squeue, is now within 7 min of it:
    it stops Snakemake, which cancels the probe's job, and requeues itself. With --max-requeues 1
    the next run goes to the end: the probe is submitted again, resumes from its checkpoint, and the
    head ends COMPLETED with every epoch in epochs.csv. (A real head stops 10 min before a days-long
    limit.) Waiting for the checkpoint, not for a fixed time, keeps this true on a loaded machine."""
    work = copy_repo(tmp_path / "repo")
    (work / "config/requeue.yaml").write_text(f"probe: {{epochs: {REQUEUE_EPOCHS}}}\nscan: {{enabled: false}}\n")
    configs = ["--configfile", "config/demo.yaml", "config/requeue.yaml"]
    snakemake(work, "results/demo/features/tiny_vit/none.manifest.json", "--profile", "profiles/local", "--cores", "2",
              *configs)  # the store first, locally: the head's window goes to the probe
    target = "results/demo/probes/tiny_vit/none/layer_02/metrics.json"
    head = subprocess.Popen([str(BIN / "layerprobe"), "submit-head", "--cluster", "slurm", "--wait", "--time-min", "10",
                             "--requeue-before-min", "7", "--max-requeues", "1", "--profile", "profiles/slurm",
                             *configs, "--", target, *QUICK,
                             *portable_profile_args(ROOT / "profiles/slurm/config.yaml")],
                            cwd=work, env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                                           "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    first = head.stdout.readline()
    job_id = re.search(r"slurm job (\S+)", first).group(1)
    stop = threading.Event()
    shortener = threading.Thread(target=_shorten_after_checkpoint,
                                 args=(job_id, work / "results/demo/checkpoints/tiny_vit/none/layer_02.pt", stop),
                                 daemon=True)
    releaser = threading.Thread(target=_release_requeued, args=(job_id, stop), daemon=True)
    shortener.start()
    releaser.start()
    try:
        out, err = head.communicate(timeout=600)
    finally:
        stop.set()
        if head.poll() is None:  # timed out: leave no head polling behind
            head.kill()
            subprocess.run(["scancel", job_id], check=False)
    assert head.returncode == 0, f"{first}{out}\n{err}"
    info = slurm.wait_done(job_id, timeout=60)
    log = Path(re.search(r"log:\s+(\S+)", out).group(1)).read_text()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", f"{info}\n{log[-4000:]}"
    assert log.count("stopping snakemake and requeueing") == 1 and "run 2" in log and "snakemake exited with 0" in log
    epochs = (work / target).with_name("epochs.csv").read_text().splitlines()
    # header + every epoch, none lost across runs
    assert len(epochs) == REQUEUE_EPOCHS + 1 and epochs[-1].startswith(f"{REQUEUE_EPOCHS},")
    probe_jobs = re.findall(r"submitted with SLURM jobid (\d+) \(log: \S+/rule_probe/", log)
    assert len(probe_jobs) == 2, probe_jobs  # cancelled with the first run, submitted again by the second
    assert scontrol_job(probe_jobs[0])["JobState"] == "CANCELLED"
    assert "resumed from results/demo/checkpoints/tiny_vit/none/layer_02.pt" in \
        (work / "results/demo/logs/probe/tiny_vit/none/layer_02.log").read_text()
