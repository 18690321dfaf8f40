"""A real single-node SLURM for tests: the session fixture `slurm` and job-record helpers.

Import the fixture into a test module with `from tests.slurm_cluster import slurm  # noqa: F401`.
The fixture runs tests/slurm/start_local_slurm.sh (installs the Debian packages if missing,
writes /etc/slurm/slurm.conf, starts munged/slurmctld/slurmd) and, at the end of the session, stops
the daemons it started (tests/slurm/stop_local_slurm.sh). It skips only when SLURM cannot
run here at all (not root, packages not installable, a foreign SLURM owns this host, too little
RAM); a cluster that is installed but does not come up is a test failure.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

SCRIPT = Path(__file__).resolve().parent / "slurm" / "start_local_slurm.sh"
# Exit codes of the script that mean "no SLURM possible on this machine" (skip, with its reason).
CANNOT_RUN_HERE = {2: "not root", 3: "packages unavailable", 4: "machine too small", 5: "foreign SLURM"}


# Resources that name things of the user's real cluster, absent on the local test cluster.
CLUSTER_SPECIFIC = {"slurm_partition", "slurm_account", "gpu_model", "constraint", "qos", "slurm_extra",
                    "cluster", "clusters", "slurm_cluster", "gres"}


def _profile_value(value: object) -> str:
    """As snakemake turns a profile value into a command-line one (numeric strings stay strings)."""
    if isinstance(value, str):
        for kind in (int, float):
            try:
                kind(value)
                return repr(value)
            except ValueError:
                pass
    return str(value)


def portable_profile_args(profile_file: Path, extra_set_resources: tuple[str, ...] = ()) -> list[str]:
    """`--default-resources ... --set-resources ...` equal to the profile's, minus the
    cluster-specific entries (partition, account, GPU model, ...), plus `extra_set_resources`.

    The profile is used as the user wrote it for everything else. Note that a --set-resources or
    --default-resources on the command line replaces the profile's whole mapping, which is why
    the profile's other entries are repeated here.
    """
    profile = yaml.safe_load(Path(profile_file).read_text()) or {}
    defaults = [f"{k}={_profile_value(v)}" for k, v in (profile.get("default-resources") or {}).items()
                if k not in CLUSTER_SPECIFIC] or ["tmpdir=system_tmpdir"]
    per_rule = [f"{rule}:{k}={_profile_value(v)}" for rule, values in (profile.get("set-resources") or {}).items()
                for k, v in (values or {}).items() if k not in CLUSTER_SPECIFIC]
    args = ["--default-resources", *defaults]
    if per_rule or extra_set_resources:
        args += ["--set-resources", *per_rule, *extra_set_resources]
    return args


@dataclass(frozen=True)
class SlurmCluster:
    host: str
    partition: str
    log_dir: Path

    def job(self, job_id: str | int) -> dict[str, str]:
        """`scontrol show job` as a dict (finished jobs stay visible: MinJobAge=3600)."""
        return scontrol_job(job_id)

    def state(self, job_id: str | int) -> str:
        return self.job(job_id).get("JobState", "")

    def wait_done(self, job_id: str | int, timeout: float = 300) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if info.get("JobState") not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", None):
                return info
            time.sleep(1)
        raise AssertionError(f"SLURM job {job_id} not finished after {timeout} s: {self.job(job_id)}")

    def wait_running(self, job_id: str | int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.state(job_id) != "RUNNING":
            if time.monotonic() > deadline:
                raise AssertionError(f"SLURM job {job_id} not running after {timeout} s: {self.job(job_id)}")
            time.sleep(0.5)


def scontrol_job(job_id: str | int) -> dict[str, str]:
    proc = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True)
    if proc.returncode != 0:
        return {}
    return parse_key_values(proc.stdout)


def parse_key_values(line: str) -> dict[str, str]:
    """`Key=value Key2=value with spaces ...` (one-line scontrol output) -> dict."""
    parts = re.split(r"\s+(?=[A-Za-z][\w/:]*=)", line.strip())
    return dict(p.split("=", 1) for p in parts if "=" in p)


def memory_mb(value: str) -> int:
    """scontrol memory ("1280M", "4G", "2T") -> MB."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)", value.strip())
    assert match, f"unexpected memory value {value!r}"
    scale = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}[match.group(2)]
    return round(float(match.group(1)) * scale)


def minutes(value: str) -> int:
    """scontrol time limit ("[D-]HH:MM:SS" or "MM:SS") -> whole minutes."""
    days, _, clock = value.rpartition("-")
    fields = [int(x) for x in clock.split(":")]
    while len(fields) < 3:
        fields.insert(0, 0)
    h, m, s = fields
    return (int(days or 0) * 24 + h) * 60 + m + (1 if s else 0)


@pytest.fixture(scope="session")
def slurm() -> Iterator[SlurmCluster]:
    try:
        proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        pytest.skip("local SLURM: start_local_slurm.sh did not finish in 600 s (package download stalled?)")
    reason = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["no output"])[-1]
    if proc.returncode in CANNOT_RUN_HERE:
        pytest.skip(f"local SLURM cannot run here ({CANNOT_RUN_HERE[proc.returncode]}): {reason}")
    if proc.returncode != 0:
        pytest.fail(f"local SLURM did not come up (exit {proc.returncode}): {reason}\n{proc.stdout}\n{proc.stderr}")
    host = subprocess.run(["hostname", "-s"], capture_output=True, text=True, check=True).stdout.strip()
    partition = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True,
                               check=True).stdout.split()[0].rstrip("*")
    spool = Path(os.environ.get("LP_SLURM_DIR", "/var/lib/layerprobe-slurm"))
    yield SlurmCluster(host=host, partition=partition, log_dir=spool / "log")
    if "already running" not in proc.stdout:  # started for this session: stop it (a cluster found running stays)
        subprocess.run(["bash", str(SCRIPT.with_name("stop_local_slurm.sh"))], capture_output=True, timeout=120)
