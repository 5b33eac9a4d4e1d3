"""The exact normaliser of a latent model with discrete hidden units and a Gaussian
visible conditional (the Gaussian-Bernoulli RBM and its relatives).

Given the hidden state h, E(v, h) is quadratic in v with precision P(h) and minimum at the
conditional mean m(h), so the visible layer integrates analytically:
    log int exp(-E(v, h)) dv = -E(m(h), h) + D/2 log(2 pi) - 1/2 log det P(h),
and log Z is the logsumexp of that over the 2^K hidden states, enumerated in chunks.
The same weights give exact ancestral samples: h from p(h), then v from p(v | h).
Enumeration is exponential in K; beyond `max_states` the method says to use AIS.
"""

from __future__ import annotations

from energydsl.compiler.domains import DOMAINS
from energydsl.compiler.emit.methods import Method, MethodBuilder

DEFAULT_MAX_STATES = 2**20


def enumerable(builder: MethodBuilder) -> bool:
    """All hidden units discrete, p(v | h) Gaussian, and no closed form for F already."""
    conditionals = builder.conditionals
    return (conditionals.visible is not None and conditionals.gaussian_precision is None
            and builder.joint_planner is not None
            and all(DOMAINS[h.domain].discrete for h in builder.checked.hidden.values()))


def enumeration_methods(builder: MethodBuilder) -> list[Method]:
    if not enumerable(builder):
        return []
    v, D = builder.visible, builder.dim
    hidden = list(builder.checked.hidden)
    sizes = [builder.checked.hidden[h].shape[0] for h in hidden]
    total = " + ".join(f"self.{s}" for s in sizes)
    like = builder.anchor  # dtype and device of the hidden states
    states_lines = ["bits = torch.arange(" + total + ", device=codes.device)",
                    f"flags = ((codes[:, None] >> bits) & 1).to(self.{like}.dtype)"]
    start = "0"
    parts = []
    for name, size in zip(hidden, sizes, strict=True):
        stop = f"self.{size}" if start == "0" else f"{start} + self.{size}"
        value = DOMAINS[builder.checked.hidden[name].domain].enumerated(
            f"flags[:, {start}:{stop}]")
        states_lines.append(f"{name} = {value}")
        parts.append(name)
        start = stop
    states_lines.append(f"return {', '.join(parts)}" + ("," if len(parts) == 1 else ""))

    args = ", ".join(f"{h}: torch.Tensor" for h in hidden)
    call = ", ".join(hidden)
    conditional = builder.conditionals.visible
    iso = conditional.isotropic is not None
    if iso and conditional.isotropic.is_number:  # P = c I with a number c
        c = float(conditional.isotropic)
        lines = []
        log_det = "" if c == 1 else f" - 0.5 * self.{D} * math.log({c!r})"
    else:
        output = "_visible_scale" if iso else "_visible_precision"
        lines, (second,) = builder.body(builder.hidden_planner, [output],
                                        builder.hidden_prologue())
        if iso:
            lines.append(f"log_det = self.{D} * torch.log({second})")
        else:
            lines.append(f"log_det = 2 * torch.log(torch.diagonal(self._cholesky({second}), "
                         "dim1=-2, dim2=-1)).sum(dim=-1)")
        log_det = " - 0.5 * log_det"
    weight_lines = lines + [
        f"mean = self.mean_{v}({call})",
        f"return -self.energy(mean, {call}) + 0.5 * self.{D} * math.log(2 * math.pi)"
        + log_det]

    states_check = [
        f"units = {total}",
        "states = 2**units",
        "if states > max_states:",
        "    raise ValueError(",
        "        f\"exact enumeration needs 2^{units} = {states} hidden states, \"",
        "        f\"more than max_states={max_states}; \"",
        "        \"estimate log Z by annealed importance sampling (energydsl.train.ais) instead\"",
        "    )",
        f"device = self.{like}.device",
        "weights = [",
        "    self._log_hidden_weight(*self._hidden_states(",
        "        torch.arange(start, min(start + chunk, states), device=device)))",
        "    for start in range(0, states, chunk)",
        "]",
        "return torch.cat(weights)",
    ]
    opts = f"max_states: int = {DEFAULT_MAX_STATES}, chunk: int = 4096"
    return [
        Method("_hidden_states", "codes: torch.Tensor", "tuple[torch.Tensor, ...]",
               "The hidden states whose bits are `codes` ([S] integers), one tensor per\n"
               "        hidden variable.", tuple(states_lines)),
        Method("_log_hidden_weight", args, "torch.Tensor",
               f"log of the integral of exp(-E({v}, h)) d{v} per hidden state, shape [S]: "
               f"{v} | h is Gaussian,\n        so it is -E(m, h) + D/2 log(2 pi) - "
               "1/2 log det P(h) at the conditional mean m.",
               tuple(weight_lines)),
        Method("_log_hidden_weights", "max_states: int, chunk: int", "torch.Tensor",
               "log of the unnormalised marginal p(h) of every hidden state, in code order.",
               tuple(states_check)),
        Method("log_partition", opts, "torch.Tensor",
               "log Z, exact: the visible layer integrated analytically for each of the "
               "2^K hidden\n        states, enumerated in chunks (at most max_states "
               "states; beyond that use AIS).",
               ("weights = self._log_hidden_weights(max_states, chunk)",
                "return torch.logsumexp(weights, dim=0)"), counts=("max_states", "chunk")),
        Method("log_prob", f"{v}: torch.Tensor, {opts}", "torch.Tensor",
               f"log p({v}) = -F({v}) - log Z, normalised, shape [N] (log Z by enumeration).",
               (f"return -self.free_energy({v}) - self.log_partition(max_states, chunk)",),
               counts=("max_states", "chunk")),
        Method("sample", f"n: int, generator: torch.Generator | None = None, {opts}",
               "torch.Tensor",
               f"n exact draws from p({v}): h from its marginal p(h) over the enumerated "
               f"states,\n        then {v} ~ p({v} | h). Shape [n, {D}].",
               ("weights = self._log_hidden_weights(max_states, chunk)",
                   "probabilities = torch.softmax(weights, dim=0)",
                   "codes = torch.multinomial(probabilities, n, replacement=True, "
                   "generator=generator)",
                   f"return self.sample_{v}(*self._hidden_states(codes), generator=generator)",
                ), counts=("n", "max_states", "chunk")),
    ]
