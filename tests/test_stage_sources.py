"""A code change that alters a stage's outputs must bump that stage in fingerprint.VERSIONS, or be
recorded as leaving outputs unchanged (tests/stage_sources.py): a forgotten bump fails here
instead of leaving stale results standing."""

import copy

from layerprobe.fingerprint import VERSIONS
from tests import stage_sources


def test_every_stage_source_is_recorded_with_its_version():
    problems = stage_sources.problems(stage_sources.load(), VERSIONS)
    assert not problems, "\n".join(problems)


def test_a_one_line_change_fails_until_versions_or_the_table_say_so(tmp_path, monkeypatch):
    """probing/probe.py with one line more: the check fails; it passes again once the table records the
    change, either as a bump of VERSIONS["probe"] or as declared unchanged."""
    package = tmp_path / "layerprobe"
    for module in stage_sources.package_modules():
        (package / module).parent.mkdir(parents=True, exist_ok=True)
        (package / module).write_bytes((stage_sources.PACKAGE / module).read_bytes())
    monkeypatch.setattr(stage_sources, "PACKAGE", package)
    table = stage_sources.load()
    assert not stage_sources.problems(table, VERSIONS)
    with (package / "probing" / "probe.py").open("a") as f:
        f.write("LEARNING_RATE_SCALE = 2.0\n")
    problems = stage_sources.problems(table, VERSIONS)
    assert len(problems) == 1 and "stage 'probe'" in problems[0] and "bump" in problems[0]
    bumped = {**VERSIONS, "probe": VERSIONS["probe"] + 1}
    assert stage_sources.problems(table, bumped)  # bumped but not recorded: still a difference
    assert not stage_sources.problems(stage_sources.record(copy.deepcopy(table), bumped, set()), bumped)
    try:
        stage_sources.record(copy.deepcopy(table), VERSIONS, set())
        raise AssertionError("recorded a changed stage without a bump or --unchanged")
    except SystemExit as refusal:
        assert "--unchanged probe" in str(refusal)
    assert not stage_sources.problems(stage_sources.record(copy.deepcopy(table), VERSIONS, {"probe"}), VERSIONS)
