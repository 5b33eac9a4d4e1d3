"""The estimators every generated module carries beside `sm_loss`.

They need no further derivation: denoising score matching and sliced score matching use
the derived score, NCE and conditional NCE the derived free energy. Each is fixed code
parametrised by the visible variable's name, so it lives here rather than in the planner.

- dsm_loss (Vincent 2011): 1/2 |score(v~) - (v - v~) / s^2|^2, v~ = v + s eps.
- ssm_loss (Song et al. 2019): u^T (d score / dv) u + 1/2 (u^T score)^2 with Gaussian
  or Rademacher projections u, the Hessian-vector product by autograd.
- nce_loss (Gutmann and Hyvarinen 2012): logistic regression of data against nu noise
  points per data point, in log space (logsigmoid) so that p_n / p_model is never formed.
- cnce_loss (Ceylan and Gutmann 2018): pairs (x, x + s eps); the symmetric noise cancels,
  leaving softplus(F(x) - F(y)), and the normaliser cancels too.
"""

from __future__ import annotations

from energydsl.compiler.emit.methods import Method


def estimator_methods(v: str, dim: str, normalised: bool) -> list[Method]:
    """dsm_loss, ssm_loss, nce_loss, cnce_loss for a module with visible variable `v` of
    size `self.<dim>`; `normalised` when the module has an exact `log_partition()` cheap
    enough to call at every step (otherwise NCE learns the scalar parameter `log_z`)."""
    shape = f"[N, {dim}]"
    log_model = ("-self.free_energy({x}) - self.log_partition()" if normalised
                 else "-self.free_energy({x}) - self.log_z")
    how_normalised = ("the exact normaliser log_partition()" if normalised
                      else "the learnable scalar parameter log_z\n        (NCE estimates "
                      "the normaliser)")
    return [
        Method(
            "dsm_loss",
            f"{v}: torch.Tensor, noise_std: float, noise: torch.Tensor | None = None, "
            "generator: torch.Generator | None = None",
            "torch.Tensor",
            "Denoising score matching with a Gaussian kernel (Vincent 2011): the batch mean of\n"
            f"        1/2 |score({v}~) - ({v} - {v}~) / noise_std^2|^2 with {v}~ = {v} + "
            "noise_std * noise,\n"
            f"        noise ~ N(0, I) of shape {shape} (pass it, or a generator, to make the "
            "loss\n        reproducible). Needs no second derivatives.",
            (f'self._check("{v}", {v}, self.{dim})',
             "if noise is None:",
             f"    noise = torch.randn({v}.shape, generator=generator, dtype={v}.dtype, "
             f"device={v}.device)",
             f'self._check("noise", noise, self.{dim}, {v}.shape[0])',
             f"perturbed = {v} + noise_std * noise",
             "residual = self.score(perturbed) + noise / noise_std",
             "return 0.5 * torch.square(residual).sum(dim=1).mean()"),
            positive=("noise_std",)),
        Method(
            "ssm_loss",
            f"{v}: torch.Tensor, n_projections: int = 1, "
            "generator: torch.Generator | None = None, "
            "projections: torch.Tensor | None = None, distribution: str = \"gaussian\"",
            "torch.Tensor",
            "Sliced score matching (Song et al. 2019), the approximate baseline: the mean over\n"
            "        samples and projections u of u^T (d score / dv) u + 1/2 (u^T score)^2, "
            "with the\n"
            "        derived score and one Hessian-vector product (autograd). Its expectation "
            "over u\n"
            f"        (E[u u^T] = I) is sm_loss. `projections` [P, N, {dim}] fixes u; else "
            "n_projections\n"
            "        draws from `distribution` ('gaussian' or 'rademacher').",
            (f'_batch = self._check("{v}", {v}, self.{dim})',
             "if projections is None:",
             "    if distribution not in (\"gaussian\", \"rademacher\"):",
             "        raise ValueError(",
             "            f\"distribution must be 'gaussian' or 'rademacher', \"",
             "            f\"got {distribution!r}\"",
             "        )",
             f"    shape = (n_projections, *{v}.shape)",
             f"    projections = torch.randn(shape, generator=generator, dtype={v}.dtype, "
             f"device={v}.device)",
             "    if distribution == \"rademacher\":",
             "        projections = torch.sign(projections)",
             "else:",
             f'    self._check_stack("projections", projections, {v}, "P")',
             f"u = projections.reshape(-1, self.{dim})",
             "with torch.enable_grad():",
             f"    point = {v}.detach().repeat(projections.shape[0], 1).requires_grad_(True)",
             "    score = self.score(point)",
             "    along = (score * u).sum(dim=1)",
             "    curvature = point.new_zeros(point.shape[0])",
             "    if along.requires_grad:  # else the score is constant: F is linear in " + v,
             "        (hvp,) = torch.autograd.grad(",
             "            along.sum(), point, create_graph=True, allow_unused=True",
             "        )",
             "        if hvp is not None:",
             "            curvature = (hvp * u).sum(dim=1)",
             "    return (curvature + 0.5 * torch.square(along)).mean()"),
            counts=("n_projections",)),
        Method(
            "nce_loss",
            "x: torch.Tensor, noise: torch.distributions.Distribution, nu: float = 1.0, "
            "noise_samples: torch.Tensor | None = None",
            "torch.Tensor",
            "Noise-contrastive estimation (Gutmann and Hyvarinen 2012) against any noise\n"
            "        distribution with sample() and log_prob(): with G(u) = log p_model(u) - "
            "log p_n(u)\n"
            "        - log nu and M = round(nu N) noise points y (or `noise_samples`),\n"
            "        loss = -1/N sum log sigmoid(G(x)) - nu/M sum log sigmoid(-G(y)).\n"
            f"        log p_model = -F - log Z with {how_normalised}.\n"
            "        All in log space: finite wherever the densities are, however small "
            "p_n / p_model.",
            (f"_batch = self._check(\"x\", x, self.{dim})",
             "if not (hasattr(noise, \"log_prob\") and hasattr(noise, \"sample\")):",
             "    raise TypeError(",
             "        \"nce_loss: noise must be a distribution with sample() and log_prob() \"",
             "        \"(such as torch.distributions.MultivariateNormal), \"",
             "        f\"got {type(noise).__name__}\"",
             "    )",
             "if noise_samples is None:",
             "    count = max(1, round(nu * _batch))",
             "    noise_samples = noise.sample((count,)).to(dtype=x.dtype, device=x.device)",
             f"self._check(\"noise_samples\", noise_samples, self.{dim})",
             "log_noise_x = noise.log_prob(x)",
             "log_noise_y = noise.log_prob(noise_samples)",
             "if log_noise_x.shape != x.shape[:1] or log_noise_y.shape != noise_samples.shape[:1]:",
             "    raise ValueError(",
             "        f\"noise.log_prob must give one value per point, shape [N], got \"",
             "        f\"{list(log_noise_x.shape)}; wrap a factorised distribution in \"",
             "        \"torch.distributions.Independent(..., 1)\"",
             "    )",
             "log_nu = math.log(nu)",
             "data_logit = (" + log_model.format(x="x") + ") - log_noise_x - log_nu",
             "noise_logit = (",
             "    " + log_model.format(x="noise_samples"),
             "    - log_noise_y",
             "    - log_nu",
             ")",
             "data_term = torch.nn.functional.logsigmoid(data_logit).mean()",
             "noise_term = torch.nn.functional.logsigmoid(-noise_logit).mean()",
             "return -(data_term + nu * noise_term)"),
            positive=("nu",)),
        Method(
            "cnce_loss",
            "x: torch.Tensor, noise_std: float, k: int = 1, noise: torch.Tensor | None = None, "
            "generator: torch.Generator | None = None",
            "torch.Tensor",
            "Conditional NCE (Ceylan and Gutmann 2018) with symmetric Gaussian noise: k "
            "contrastive\n"
            "        points y = x + noise_std * noise per data point (noise ~ N(0, I), shape "
            f"[k, N, {dim}]);\n"
            "        loss = 2/(k N) sum log(1 + exp(-G)), G = log p~(x) - log p~(y) = F(y) - "
            "F(x).\n"
            "        The noise density and the normaliser cancel, so none is needed.",
            (f"_batch = self._check(\"x\", x, self.{dim})",
             "if noise is None:",
             "    noise = torch.randn((k, *x.shape), generator=generator, dtype=x.dtype, "
             "device=x.device)",
             "else:",
             '    self._check_stack("noise", noise, x, "k")',
             "contrast = (x + noise_std * noise).reshape(-1, x.shape[1])",
             "data_energy = self.free_energy(x).repeat(noise.shape[0])",
             "logit = self.free_energy(contrast) - data_energy",
             "return 2 * torch.nn.functional.softplus(-logit).mean()"),
            positive=("noise_std",), counts=("k",)),
    ]
