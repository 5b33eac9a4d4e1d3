"""Stage 6, plan: derived definitions -> straight-line tensor programs (see planner)."""

from energydsl.compiler.plan.planner import DEFAULT_BATCH_SIZE, Planner
from energydsl.compiler.plan.program import BATCH, Operand, Program, Step, uses_name

__all__ = ["BATCH", "DEFAULT_BATCH_SIZE", "Operand", "Planner", "Program", "Step", "uses_name"]
