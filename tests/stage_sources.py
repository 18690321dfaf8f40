"""Code identity per stage: the source of each stage's modules, hashed, against a committed table.

`fingerprint.VERSIONS` identifies the code of each stage in every fingerprint, but it is bumped by
hand, and a forgotten bump leaves stale results standing. tests/stage_sources.json records, per
stage, the version and the sha256 of every module that shapes what the stage writes;
tests/test_stage_sources.py fails when a module changed and the table was not updated. Update it
with one of:

    python -m tests.stage_sources --record               # after bumping VERSIONS[stage] for a change
    python -m tests.stage_sources --record --unchanged probe   # the change leaves probe outputs as they were

`--record` refuses a stage whose sources changed while its version did not, unless `--unchanged`
names it: the two ways out are a bump (results rerun) or a statement that outputs are unchanged.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "layerprobe"
TABLE = Path(__file__).with_name("stage_sources.json")


def source_hash(module: str) -> str:
    return hashlib.sha256((PACKAGE / module).read_bytes()).hexdigest()[:16]


def package_modules() -> list[str]:
    return sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def load() -> dict:
    return json.loads(TABLE.read_text())


def problems(table: dict, versions: dict[str, int]) -> list[str]:
    """Why the table does not describe the sources: changed modules, versions, unassigned modules."""
    found = []
    assigned = set(table["no_stage"])
    for stage, entry in table["stages"].items():
        assigned |= set(entry["sources"])
        changed = [m for m, h in entry["sources"].items() if not (PACKAGE / m).is_file() or source_hash(m) != h]
        if entry["version"] != versions.get(stage):
            found.append(f"stage {stage!r}: VERSIONS says {versions.get(stage)}, the table {entry['version']}; "
                         "record the bumped version: python -m tests.stage_sources --record")
        elif changed:
            found.append(f"stage {stage!r}: {changed} changed. If outputs change, bump fingerprint.VERSIONS"
                         f"[{stage!r}]; if not, say so: python -m tests.stage_sources --record --unchanged {stage}")
    for module in package_modules():
        if module not in assigned:
            found.append(f"{module}: in no stage; add it to a stage's sources (or to no_stage if it shapes no "
                         "output's bytes) in tests/stage_sources.json")
    return found


def record(table: dict, versions: dict[str, int], unchanged: set[str]) -> dict:
    """The table with the current sources, for stages bumped or declared unchanged."""
    for stage, entry in table["stages"].items():
        current = {m: source_hash(m) for m in entry["sources"] if (PACKAGE / m).is_file()}
        if current == entry["sources"] and entry["version"] == versions[stage]:
            continue
        bumped = versions[stage] != entry["version"]
        if not bumped and stage not in unchanged:
            raise SystemExit(f"stage {stage!r} changed but fingerprint.VERSIONS[{stage!r}] is still "
                             f"{versions[stage]}: bump it, or pass --unchanged {stage}")
        entry["sources"], entry["version"] = current, versions[stage]
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--record", action="store_true", help="write the current sources into the table")
    parser.add_argument("--unchanged", nargs="*", default=[], help="stages whose outputs a change leaves as they were")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from layerprobe.fingerprint import VERSIONS

    table = load()
    if args.record:
        table = record(table, VERSIONS, set(args.unchanged))
        TABLE.write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")
    for problem in problems(table, VERSIONS):
        print(problem)


if __name__ == "__main__":
    main()
