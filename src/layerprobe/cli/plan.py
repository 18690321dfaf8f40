"""`layerprobe plan --configfile config/config.yaml`: store sizes, RAM and GPU-hours per rule, before
submitting anything (works without data or weights)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import config as lp_config
from ..plan.estimates import ADE20K_SIZES, plan
from ..plan.text import format_plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="layerprobe plan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--configfile", required=True, type=Path, help="the workflow config (e.g. config/config.yaml)")
    parser.add_argument("--training", type=int, help="training images (default: counted, or ADE20K's 20210)")
    parser.add_argument("--validation", type=int, help="validation images (default: counted, or ADE20K's 2000)")
    args = parser.parse_args(argv)
    try:
        config = lp_config.load(args.configfile)
    except (OSError, lp_config.ConfigError) as err:
        parser.exit(2, f"layerprobe plan: invalid config {args.configfile}: {err}\n")
    given = None
    if args.training is not None or args.validation is not None:
        given = {"training": ADE20K_SIZES["training"] if args.training is None else args.training,
                 "validation": ADE20K_SIZES["validation"] if args.validation is None else args.validation}
    result = plan(config, given)
    print(f"layerprobe plan for {args.configfile}\n")
    print(format_plan(result))
    return 0


