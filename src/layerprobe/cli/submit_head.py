"""`layerprobe submit-head`: run the Snakemake controller itself as a long, small SLURM job.

The controller only builds the DAG, submits jobs and polls their state, so it needs one CPU and
a little RAM, but it must outlive the login session for days. submitit submits it:

    layerprobe submit-head --profile profiles/slurm --configfile config/config.yaml
    layerprobe submit-head --partition cpu --time-min 2880 -- --keep-going results/report.html

Everything after `--` goes to snakemake unchanged (targets, --set-resources, ...). The job runs
`python -m snakemake` with this interpreter in the repository directory; its stdout/stderr go to
`--folder` (default results/logs/head/<jobid>_0_log.out).

A head that comes back by itself:
- Time limit: the controller knows when its job ends (squeue's time left, read again every
  DEADLINE_REFRESH_S, so a limit an admin changes with `scontrol update` is followed). `--requeue-before-min`
  before that it stops Snakemake (SIGINT: Snakemake cancels the jobs it submitted and releases
  its lock) and requeues its own job (`scontrol requeue`, the job is submitted `--requeue`). The
  same job id runs again, submitit reruns the same controller, and Snakemake continues from the
  finished outputs (interrupted jobs resume from their checkpoints / finished chunks). This does
  not rely on SLURM's pre-timeout signal, which never reaches a controller that runs in the batch
  shell (no srun step), nor on signals reaching the rule jobs (plugin issues #242/#243).
- A stale lock: a Snakemake killed hard (past KillWait, a node failure) leaves
  `.snakemake/locks`. On start, and before submitting, the controller looks for live head jobs of
  this directory (squeue: the job name and the working directory). None: it unlocks and goes on.
  One: it refuses, naming that job, because two controllers must never share a directory.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_TIME_MIN = 3 * 24 * 60  # three days
DEFAULT_MEM_GB = 2.0
HEAD_LOGS = "logs/head"  # under the config's results root (pathvars.results)
DEFAULT_REQUEUE_BEFORE_MIN = 10.0  # stop and requeue this long before the time limit
DEADLINE_REFRESH_S = 10  # one squeue call: cheap beside the executor plugin's own polling
STOP_WAIT_S = 120  # how long Snakemake gets to cancel its jobs and release its lock
PREFIX = "[layerprobe submit-head]"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="layerprobe submit-head",
        description="Submit the Snakemake controller as a long 1-CPU, low-RAM SLURM job (submitit). "
                    "Arguments after `--` are passed to snakemake.")
    parser.add_argument("--profile", default="profiles/slurm",
                        help="snakemake profile the controller uses for its jobs (default: %(default)s)")
    parser.add_argument("--configfile", nargs="+", default=None, metavar="FILE",
                        help="config file(s) passed to snakemake")
    parser.add_argument("--directory", default=".",
                        help="repository (working directory of the controller; default: current directory)")
    parser.add_argument("--partition", default=None, help="SLURM partition of the head job")
    parser.add_argument("--account", default=None, help="SLURM account of the head job")
    parser.add_argument("--time-min", type=int, default=DEFAULT_TIME_MIN,
                        help="time limit of the head job in minutes (default: %(default)s = 3 days)")
    parser.add_argument("--mem-gb", type=float, default=DEFAULT_MEM_GB,
                        help="RAM of the head job in GB (default: %(default)s)")
    parser.add_argument("--cpus", type=int, default=1, help="CPUs of the head job (default: %(default)s)")
    parser.add_argument("--job-name", default="layerprobe-head", help="SLURM job name (default: %(default)s)")
    parser.add_argument("--folder", default=None,
                        help="submitit folder for the job's logs and pickles, relative to --directory "
                             f"(default: {HEAD_LOGS} under the config's results root, e.g. results/{HEAD_LOGS})")
    parser.add_argument("--cluster", choices=["auto", "slurm", "local", "debug"], default="auto",
                        help="submitit executor: auto (SLURM when srun exists, else local), slurm, local "
                             "(a detached process on this machine) or debug (in this process); "
                             "default: %(default)s")
    parser.add_argument("--wait", action="store_true",
                        help="block until the controller finishes; exit 0 when its Snakemake run succeeded, "
                             "1 when it failed")
    parser.add_argument("--requeue-before-min", type=float, default=DEFAULT_REQUEUE_BEFORE_MIN,
                        help="on SLURM, stop Snakemake and requeue the head job this many minutes before its time "
                             "limit (default: %(default)s)")
    parser.add_argument("--max-requeues", type=int, default=50,
                        help="requeue at most this many times (default: %(default)s)")
    parser.add_argument("snakemake_args", nargs=argparse.REMAINDER,
                        help="extra snakemake arguments, after `--`")
    args = parser.parse_args(argv)
    extra = list(args.snakemake_args)
    if extra and extra[0] == "--":
        extra = extra[1:]
    args.snakemake_args = extra
    if args.time_min < 1:
        parser.error("--time-min must be at least 1")
    if args.mem_gb <= 0:
        parser.error("--mem-gb must be positive")
    return args


def snakemake_command(profile: str | None, configfiles: list[str] | None, extra: list[str]) -> list[str]:
    """`python -m snakemake ...` with this interpreter.

    Extra arguments come first and `--configfile` (which takes several values) last, so targets in
    `extra` are never read as config files.
    """
    command = [sys.executable, "-m", "snakemake", *extra]
    if profile:
        command += ["--profile", profile]
    if configfiles:
        command += ["--configfile", *configfiles]
    return command


class SnakemakeFailed(RuntimeError):
    """The controller's snakemake exited non-zero (the head job then ends FAILED)."""


class LiveHead(RuntimeError):
    """Another head job of this directory is alive: two controllers must not share it."""


class Controller:
    """What the head job runs: Snakemake in the repository, stopped and requeued before the time
    limit, after clearing a lock that no live head holds."""

    def __init__(self, command: list[str], workdir: str, job_name: str, requeue_before_s: float,
                 max_requeues: int) -> None:
        self.command, self.workdir, self.job_name = command, workdir, job_name
        self.requeue_before_s, self.max_requeues = requeue_before_s, max_requeues

    def __call__(self) -> int:
        job_id = os.environ.get("SLURM_JOB_ID")
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        print(f"{PREFIX} cwd {self.workdir}\n{PREFIX} {shlex.join(self.command)}"
              + (f"\n{PREFIX} SLURM job {job_id}, run {restarts + 1}" if job_id else ""), flush=True)
        clear_stale_lock(self.workdir, self.job_name, self.command, own_job=job_id)
        deadline = Deadline(job_id)
        env = dict(os.environ)
        # Rule scripts and job steps find this interpreter's tools (snakemake, python) first.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        process = subprocess.Popen(self.command, cwd=self.workdir, env=env)
        while True:
            try:
                code = process.wait(timeout=5)
                break
            except subprocess.TimeoutExpired:
                left = deadline.seconds_left()
                if left is not None and left <= self.requeue_before_s and restarts < self.max_requeues:
                    self._stop_and_requeue(process, job_id)
        print(f"{PREFIX} snakemake exited with {code}", flush=True)
        if code != 0:
            raise SnakemakeFailed(f"snakemake exited with {code}; see the log above")
        return code

    def _stop_and_requeue(self, process: subprocess.Popen, job_id: str) -> None:
        print(f"{PREFIX} {self.requeue_before_s / 60:g} min before the time limit: stopping snakemake and "
              f"requeueing job {job_id}", flush=True)
        # SIGINT, not SIGTERM: on SIGTERM Snakemake waits for its running jobs to finish (hours);
        # on SIGINT it cancels them (their checkpoints stay) and exits, releasing its lock.
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        print(f"{PREFIX} snakemake stopped ({process.returncode}); requeueing: the next run continues from "
              "the finished outputs", flush=True)
        subprocess.run(["scontrol", "requeue", str(job_id)], check=True, timeout=60)
        sys.stdout.flush()
        os._exit(0)  # no result for this run (submitit writes none): SLURM runs the job again


def live_heads(workdir: str | Path, job_name: str, own_job: str | None = None) -> list[str]:
    """SLURM job ids of live head jobs of this directory (name and working directory match)."""
    if shutil.which("squeue") is None:
        return []
    proc = subprocess.run(["squeue", "-h", "-n", job_name, "-o", "%i|%T|%Z"], capture_output=True, text=True,
                          check=False)
    heads = []
    for line in proc.stdout.splitlines():
        job, state, where = (line.split("|") + ["", "", ""])[:3]
        if job != own_job and state in ACTIVE_STATES and Path(where).resolve() == Path(workdir).resolve():
            heads.append(job)
    return heads


def clear_stale_lock(workdir: str | Path, job_name: str, command: list[str], own_job: str | None = None) -> bool:
    """Unlock the directory when a killed Snakemake left its lock and no live head holds it.

    Raises LiveHead, naming the job, when another head of this directory is alive. Returns
    whether a stale lock was removed.
    """
    others = live_heads(workdir, job_name, own_job)
    if others:
        raise LiveHead(f"head job(s) {', '.join(others)} of {workdir} are alive (squeue -n {job_name}); "
                       f"two controllers must not share a directory: wait for them or `scancel {others[0]}`")
    locks = Path(workdir) / ".snakemake" / "locks"
    if not locks.is_dir() or not any(locks.iterdir()):
        return False
    if own_job is None:  # a local head cannot see a snakemake started by hand: never guess
        print(f"{PREFIX} {locks} holds a lock; if no snakemake runs in {workdir}, run snakemake --unlock",
              flush=True)
        return False
    print(f"{PREFIX} removing a stale lock in {locks} (no live head job of this directory)", flush=True)
    subprocess.run([*command, "--unlock"], cwd=workdir, check=True, capture_output=True, text=True)
    return True


class Deadline:
    """When SLURM ends this job, re-read from squeue every DEADLINE_REFRESH_S (None: no SLURM job or no limit)."""

    def __init__(self, job_id: str | None) -> None:
        self.job_id, self.read_at, self.at = job_id, float("-inf"), None

    def seconds_left(self) -> float | None:
        if self.job_id is None:
            return None
        if time.monotonic() - self.read_at >= DEADLINE_REFRESH_S:
            self.at, self.read_at = job_deadline(self.job_id), time.monotonic()
        return None if self.at is None else self.at - time.time()


def job_deadline(job_id: str) -> float | None:
    """When SLURM ends the job (epoch seconds), from squeue's time left; None if unlimited/unknown."""
    proc = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%L"], capture_output=True, text=True,
                          check=False)
    left = parse_time_left(proc.stdout.strip())
    return None if left is None else time.time() + left


def parse_time_left(text: str) -> float | None:
    """squeue %L ('days-hh:mm:ss', 'hh:mm:ss', 'mm:ss', 'UNLIMITED') -> seconds."""
    if not text or text in ("UNLIMITED", "NOT_SET", "INVALID"):
        return None
    days, _, clock = text.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    return (int(days or 0) * 24 + parts[0]) * 3600 + parts[1] * 60 + parts[2]


ACTIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED",
                 "PREEMPTED", "STAGE_OUT", "SIGNALING", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"}


def slurm_state(job_id: str) -> str | None:
    """The job's state from squeue (no accounting database needed); None once SLURM forgot it."""
    proc = subprocess.run(["squeue", "-h", "--states=all", "-j", str(job_id), "-o", "%T"],
                          capture_output=True, text=True, check=False)
    lines = proc.stdout.split()
    return lines[0] if proc.returncode == 0 and lines else None


def wait_for(job: Any, cluster: str, poll_s: float = 2.0) -> Any:
    """job.result(), but on SLURM polls squeue instead of submitit's sacct (absent without accounting)."""
    if cluster == "slurm":
        state = None
        while not job.paths.result_pickle.exists():
            state = slurm_state(job.job_id)
            if state is None or state not in ACTIVE_STATES:
                break  # finished (or gone): the result pickle, if any, is written before the job ends
            time.sleep(poll_s)
        for _ in range(10):  # a shared file system may show the pickle a moment late
            if job.paths.result_pickle.exists():
                break
            time.sleep(1)
        else:  # submitit's job.result() would wait on sacct forever
            raise RuntimeError(f"head job {job.job_id} ended ({state or 'gone from squeue'}) without a result; "
                               f"see {job.paths.stdout} and {job.paths.stderr}")
    return job.result()


def head_folder(configfiles: list[str], workdir: Path) -> str:
    """`logs/head` under the results root the config names (`pathvars.results`)."""
    from ..config import merged_raw, schema_default

    raw = merged_raw([p if Path(p).is_absolute() else workdir / p for p in configfiles])
    root = (raw.get("pathvars") or {}).get("results") or schema_default("pathvars.results")
    return f"{root}/{HEAD_LOGS}"


def make_executor(args: argparse.Namespace, folder: Path) -> Any:
    import submitit

    cluster = None if args.cluster == "auto" else args.cluster
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    params: dict[str, Any] = {"name": args.job_name, "timeout_min": args.time_min, "mem_gb": args.mem_gb,
                              "cpus_per_task": args.cpus, "nodes": 1, "tasks_per_node": 1,
                              "stderr_to_stdout": True}
    if executor.cluster == "slurm":
        # The controller starts its own jobs with sbatch; running it directly in the batch script
        # (not in an srun step) keeps it out of a job step. --requeue: it requeues itself before its
        # time limit; --chdir: squeue shows its directory, so a second head for it is refused.
        params.update(slurm_partition=args.partition, slurm_account=args.account, slurm_use_srun=False,
                      slurm_additional_parameters={"requeue": True, "chdir": str(Path(args.directory).resolve())})
    executor.update_parameters(**params)
    return executor


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    workdir = Path(args.directory).resolve()
    if not (workdir / "Snakefile").is_file():
        print(f"submit-head: no Snakefile in {workdir} (use --directory)", file=sys.stderr)
        return 2
    if args.profile and os.sep in args.profile and not (workdir / args.profile).is_dir():
        print(f"submit-head: profile directory {args.profile!r} not found", file=sys.stderr)
        return 2
    folder = Path(args.folder or head_folder(args.configfile or [], workdir))
    folder = (folder if folder.is_absolute() else workdir / folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    command = snakemake_command(args.profile, args.configfile, args.snakemake_args)

    others = live_heads(workdir, args.job_name)
    if others:
        print(f"submit-head: head job(s) {', '.join(others)} of {workdir} are alive; not submitting another "
              f"(two controllers must not share a directory). Wait for it, or `scancel {others[0]}`.",
              file=sys.stderr)
        return 2
    executor = make_executor(args, folder)
    controller = Controller(command, str(workdir), args.job_name, args.requeue_before_min * 60, args.max_requeues)
    job = executor.submit(controller)
    cluster = executor.cluster
    log = job.paths.stdout
    print(f"Submitted the Snakemake controller as {cluster} job {job.job_id}"
          f" ({args.cpus} CPU, {args.mem_gb:g} GB, {args.time_min} min).")
    print(f"  command: {shlex.join(command)}")
    print(f"  log:     {log}")
    if cluster == "slurm":
        print(f"  follow:  tail -f {log}    status: squeue -j {job.job_id}    stop: scancel {job.job_id}")
    if not (args.wait or cluster == "debug"):
        return 0
    try:
        wait_for(job, cluster)
    except Exception as err:  # submitit wraps the controller's failure
        print(f"submit-head: the controller failed: {err}", file=sys.stderr)
        return 1
    print(f"The controller finished (job {job.job_id}); log: {log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
