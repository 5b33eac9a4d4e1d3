"""Hidden-unit domains: one object per domain owns everything about its units.

A `Domain` says what one unit of a hidden variable is: the SymPy assumptions of the
symbol that stands for it, how its unit energy e(h; v) marginalises (`log_partition`,
with the convergence condition and the coefficients the conditionals need), its
conditional moments and sampler parameters given v (`moments`), the code that draws it
(`draw`), the values an exact normaliser enumerates (`enumerated`, discrete domains
only), and the nodes and log-weights over which `check` integrates it (`quadrature`).
Adding a domain is one new file here with its entry in DOMAINS;
tests/compiler/test_domains.py checks every entry against brute-force sums and
quadrature.
"""

from __future__ import annotations

from energydsl.compiler.domains.base import Domain, Quadrature, UnitFailure
from energydsl.compiler.domains.categorical import Categorical
from energydsl.compiler.domains.continuous import Gamma, Gaussian
from energydsl.compiler.domains.discrete import Discrete

DOMAINS: dict[str, Domain] = {domain.name: domain for domain in (
    Discrete("binary", (0, 1)),
    Discrete("spin", (-1, 1)),
    Gaussian("real"),
    Gamma("positive"),
    Categorical("categorical"),
)}

HIDDEN_DOMAINS = tuple(DOMAINS)
VISIBLE_DOMAINS = ("real", "binary", "spin")


def visible_domain(model: object) -> Domain:
    """The domain of a compiled module's (or class's) data: its `visible_domain`, real
    when it has none (real-data specs and companion models carry no such attribute)."""
    return DOMAINS[getattr(model, "visible_domain", "real")]


__all__ = ["DOMAINS", "HIDDEN_DOMAINS", "VISIBLE_DOMAINS", "Domain", "Quadrature",
           "UnitFailure", "visible_domain"]
