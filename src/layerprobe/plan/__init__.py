"""What a config will cost before anything runs: `estimates` (disk, RAM and hours per rule, from
the store layout and `layerprobe.resources`) and `text` (the tables and the dry-run summary)."""

from .estimates import Plan, plan, requested
from .text import format_plan, summary

__all__ = ["Plan", "plan", "requested", "format_plan", "summary"]
