"""The package reads as the pipeline: paths under a results root are spelled in the rules only,
modules stay small, and every config writes under a results root of its own."""

from __future__ import annotations

import ast

import yaml

from tests.conftest import ROOT

PACKAGE = ROOT / "src" / "layerprobe"
MAX_LINES = 420  # "a module that does one thing rarely needs more than a few hundred lines"


def _strings(tree: ast.AST) -> list[ast.Constant]:
    """String literals that are not docstrings (a docstring may name a path to explain it)."""
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [node for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings]


def test_the_package_never_builds_a_results_path():
    """Snakemake gives the package its paths (inputs, outputs, params); a literal `results/`
    in src/ would be a second source for where results live."""
    hits = [f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}"
            for path in sorted(PACKAGE.rglob("*.py"))
            for node in _strings(ast.parse(path.read_text()))
            if node.value.startswith("results/") or "/results/" in node.value]
    assert not hits, "\n".join(hits)


def test_no_module_grows_past_a_few_hundred_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_each_config_writes_under_a_results_root_of_its_own():
    roots = {}
    for name in ("config.yaml", "demo.yaml", "smoke.yaml"):
        raw = yaml.safe_load((ROOT / "config" / name).read_text())
        roots[name] = (raw.get("pathvars") or {}).get("results", "results")
    assert roots["config.yaml"] == "results"  # the user's layout
    assert len(set(roots.values())) == len(roots), roots
