"""`layerprobe submit-head`: run the Snakemake controller itself as a long, small SLURM job.

The controller only builds the DAG, submits jobs and polls their state, so it needs one CPU and
a little RAM, but it must outlive the login session for days. submitit submits it:

    layerprobe submit-head --profile profiles/slurm --configfile config/config.yaml
    layerprobe submit-head --partition cpu --time-min 2880 -- --keep-going results/report.html

Everything after `--` goes to snakemake unchanged (targets, --set-resources, ...). The job runs
`python -m snakemake` with this interpreter in the repository directory; its stdout/stderr go to
`--folder` (default results/logs/head/<jobid>_0_log.out). If the head job ends early (time
limit, scancel), SLURM sends SIGTERM, Snakemake cancels the jobs it submitted, and running the
same command again continues from the finished outputs (interrupted jobs resume from their
checkpoints / finished chunks).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_TIME_MIN = 3 * 24 * 60  # three days
DEFAULT_MEM_GB = 2.0
DEFAULT_FOLDER = "results/logs/head"


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
    parser.add_argument("--folder", default=DEFAULT_FOLDER,
                        help="submitit folder for the job's logs and pickles, relative to --directory "
                             "(default: %(default)s)")
    parser.add_argument("--cluster", choices=["auto", "slurm", "local", "debug"], default="auto",
                        help="submitit executor: auto (SLURM when srun exists, else local), slurm, local "
                             "(a detached process on this machine) or debug (in this process); "
                             "default: %(default)s")
    parser.add_argument("--wait", action="store_true",
                        help="block until the controller finishes and return its exit code")
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


def run_controller(command: list[str], workdir: str) -> int:
    """Runs inside the head job: snakemake in the repository, output into the job's log."""
    env = dict(os.environ)
    # Rule scripts and job steps find this interpreter's tools (snakemake, python) first.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    print(f"[layerprobe submit-head] cwd {workdir}\n[layerprobe submit-head] {shlex.join(command)}", flush=True)
    code = subprocess.run(command, cwd=workdir, env=env, check=False).returncode
    print(f"[layerprobe submit-head] snakemake exited with {code}", flush=True)
    if code != 0:
        raise SnakemakeFailed(f"snakemake exited with {code}; see the log above")
    return code


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
        while not job.paths.result_pickle.exists():
            state = slurm_state(job.job_id)
            if state is None or state not in ACTIVE_STATES:
                break  # finished (or gone): the result pickle, if any, is written before the job ends
            time.sleep(poll_s)
    return job.result()


def make_executor(args: argparse.Namespace, folder: Path) -> Any:
    import submitit

    cluster = None if args.cluster == "auto" else args.cluster
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    params: dict[str, Any] = {"name": args.job_name, "timeout_min": args.time_min, "mem_gb": args.mem_gb,
                              "cpus_per_task": args.cpus, "nodes": 1, "tasks_per_node": 1,
                              "stderr_to_stdout": True}
    if executor.cluster == "slurm":
        # The controller starts its own jobs with sbatch; running it directly in the batch script
        # (not in an srun step) keeps it out of a job step.
        params.update(slurm_partition=args.partition, slurm_account=args.account, slurm_use_srun=False)
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
    folder = Path(args.folder)
    folder = (folder if folder.is_absolute() else workdir / folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    command = snakemake_command(args.profile, args.configfile, args.snakemake_args)

    executor = make_executor(args, folder)
    job = executor.submit(run_controller, command, str(workdir))
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
