"""`layerprobe <command>`: small entry points beside the Snakemake workflow.

Each subcommand lives in its own module with a `main(argv)`; this file only dispatches, so
commands can be added without touching each other.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "plan": ("layerprobe.cli.plan", "print store sizes, RAM and GPU-hours for a config before submitting"),
    "fetch-configs": ("layerprobe.cli.fetch_configs",
                      "cache hub models' config.json (what the DAG reads) into weights.cache_dir"),
    "submit-head": ("layerprobe.cli.submit_head", "submit the Snakemake controller itself as a SLURM job (submitit)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        lines = [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
        print("usage: layerprobe <command> [options]\n\ncommands:\n" + "\n".join(lines))
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
