"""The planner's output: a straight-line program of named steps, and what each costs.

An `Operand` is a value the program can use (its code, and the axes its tensor has, in
order); a `Step` is one assignment with the formula it computes as its comment and its
estimated cost in multiply-adds at the planning sizes; a `Program` keeps the steps in
order and answers which ones an output needs and what they cost.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import sympy as sp

BATCH = sp.Symbol("_n")
"""The batch axis: every value that depends on a method's inputs has it first."""


@dataclass(frozen=True)
class Operand:
    """A value in the program: its Python code, axis order and whether it is a tensor."""

    code: str
    indices: tuple[sp.Basic, ...] = ()
    is_tensor: bool = True

    def relabel(self, mapping: dict) -> Operand:
        return Operand(self.code, tuple(mapping.get(i, i) for i in self.indices), self.is_tensor)


@dataclass(frozen=True)
class Step:
    name: str
    code: str
    comment: str
    deps: tuple[str, ...]
    cost: float = 0.0  # estimated multiply-adds at the planning sizes


@dataclass
class Program:
    steps: list[Step] = field(default_factory=list)

    def needed(self, codes: list[str], replaced: dict[str, Step] | None = None
               ) -> list[Step]:
        """The steps an output needs, in program order (dead code dropped); `replaced`
        steps stand in for the program's own of the same name, each placed after what
        it uses."""
        replaced = replaced or {}
        by_name = {step.name: replaced.get(step.name, step) for step in self.steps}
        wanted: set[str] = set()
        stack = [name for name in codes if name in by_name]
        while stack:
            name = stack.pop()
            if name in wanted:
                continue
            wanted.add(name)
            stack.extend(dep for dep in by_name[name].deps if dep in by_name)
        ordered = [by_name[step.name] for step in self.steps if step.name in wanted]
        return _after_their_deps(ordered) if replaced else ordered

    def cost(self, codes: list[str], given: set[str] | frozenset[str] = frozenset()) -> float:
        """The estimated cost of computing `codes`, steps named in `given` for free."""
        return sum(step.cost for step in self.needed(codes) if step.name not in given)


def _after_their_deps(steps: list[Step]) -> list[Step]:
    """The steps in their order, except that each comes after the steps it uses."""
    names = {step.name for step in steps}
    done: set[str] = set()
    out: list[Step] = []
    pending = list(steps)
    while pending:
        for k, step in enumerate(pending):
            if all(dep in done or dep not in names for dep in step.deps):
                out.append(pending.pop(k))
                done.add(step.name)
                break
        else:  # pragma: no cover - a cycle: the planner never makes one
            raise ValueError("steps depend on each other in a cycle")
    return out


def volume(shape: tuple[int, ...]) -> int:
    """The number of elements of a tensor of this shape."""
    out = 1
    for s in shape:
        out *= s
    return out


def uses_name(code: str, name: str) -> bool:
    """Whether code mentions the variable `name` (not as an attribute or a longer name)."""
    return re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", code) is not None
