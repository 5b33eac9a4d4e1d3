"""How a planned method is laid out as Python: its `def` line and its argument checks."""

from __future__ import annotations

import re

from energydsl.compiler.ir import Method

LINE_LENGTH = 100
# The argument checks of a generated module (each takes the calling method's name first).
_CHECK_CALL = re.compile(r"self\.(_check|_check_stack|_positive|_generator)\(")


def signature(name: str, params: str, returns: str) -> str:
    """The `def` line, its parameters one per line when it would be too long."""
    params = f"self, {params}" if params else "self"
    line = f"    def {name}({params}) -> {returns}:"
    if len(line) <= LINE_LENGTH:
        return line
    inner = "".join(f"        {p.strip()},\n" for p in _split_params(params))
    return f"    def {name}(\n{inner}    ) -> {returns}:"


def _split_params(params: str) -> list[str]:
    """Split a parameter list at top-level commas (not inside brackets)."""
    parts, depth, current = [], 0, ""
    for char in params:
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        depth += char in "[("
        depth -= char in "])"
        current += char
    return parts + [current]


def checked_body(method: Method) -> tuple[str, ...]:
    """The body as written into the module: the numeric and generator arguments checked
    first, and every check naming this method (`self._check(name, ...)` ->
    `self._check("method", name, ...)`), so a bad argument's error says which call it
    came from."""
    checks = [f'self._positive("{name}", {name}, integer=True)' for name in method.counts]
    checks += [f'self._positive("{name}", {name})' for name in method.positive]
    if "generator: torch.Generator" in method.params:
        checks.append("self._generator(generator)")
    return tuple(_CHECK_CALL.sub(rf'self.\1("{method.name}", ', line)
                 for line in [*checks, *method.body])
