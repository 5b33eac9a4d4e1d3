"""The names a spec may not use, because the generated module uses them already.

A spec's names become attributes, arguments and locals of the generated module; these
tables list what they could shadow or break there: the language's keywords, the module's
own attributes and methods (and torch.nn.Module's), the locals and arguments of its fixed
methods, the modules it imports and Python's built-ins. The resolver refuses them with a
positioned error; the conformance tests check the templates against these tables.
"""

from __future__ import annotations

import builtins
import keyword
import re

from energydsl.compiler import syntax as ast
from energydsl.compiler.functions import FUNCTIONS
from energydsl.errors import error
from energydsl.estimators import all_estimators

KEYWORDS = ("model", "dim", "const", "visible", "hidden", "param", "let", "energy", "free",
            "density", "sum", "logsumexp", "in", "where")

# Names the generated module defines or inherits from torch.nn.Module: a spec name equal
# to one of them would shadow a method. (Names starting with '_' are rejected wholesale.)
RESERVED_ATTRIBUTES = frozenset("""
    self torch math super cls dtype device
    free_energy score laplacian sm_loss sm_terms reconstruct energy log_prob log_partition
    sample precision log_z spec_hash formulas
    visible_size
    T_destination add_module apply bfloat16 buffers call_super_init children compile cpu
    cuda double dump_patches eval extra_repr float forward get_buffer get_extra_state
    get_parameter get_submodule half ipu load_state_dict modules mtia named_buffers
    named_children named_modules named_parameters parameters register_backward_hook
    register_buffer register_forward_hook register_forward_pre_hook
    register_full_backward_hook register_full_backward_pre_hook
    register_load_state_dict_post_hook register_load_state_dict_pre_hook register_module
    register_parameter register_state_dict_post_hook register_state_dict_pre_hook
    requires_grad_ set_extra_state set_submodule share_memory state_dict to to_empty train
    training type xpu zero_grad sm_objective validate
    flip_gain rm_objective pl_objective visible_domain
""".split())
# ... and the method every registered estimator adds (dsm_loss, ...)
RESERVED_ATTRIBUTES |= {e.method for e in all_estimators() if e.method is not None}

# Argument and local names of the generated methods that take the visible or hidden
# variables as arguments: a variable of the same name would be shadowed inside them.
METHOD_LOCALS = frozenset("""
    noise noise_std noise_samples generator projections n_projections distribution nu n k
    mean factor offset shape max_states chunk bits flags codes log_det states units device
    weights probabilities u point along hvp perturbed residual count data_logit data_term
    log_nu noise_logit noise_term contrast data_energy logit log_noise_x log_noise_y
    curvature layer start lowest category hidden_units
""".split())

# Locals of the generated methods that also compute `let` definitions (and constrained
# parameters' values) inline: a definition of the same name would overwrite them.
DEFINITION_LOCALS = frozenset("""
    generator mean noise factor offset bits flags codes
""".split())

# Module-level names of the generated module and Python's built-in names: a spec name
# equal to one would shadow it (as the class, a constructor argument or a method local).
MODULE_NAMES = frozenset({"torch", "math"})
PYTHON_BUILTINS = frozenset(name for name in dir(builtins) if not name.startswith("_"))

# What a name may look like, whatever the grammar accepts: it is pasted into Python code.
IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]*", re.ASCII)

# Generated methods a constrained parameter may be exposed as (no generated method
# of the same name exists for a model with such a parameter).
ACCESSOR_NAMES = {"precision"}


def check_identifier(ident: ast.Ident, what: str, allow_method_names: bool = False) -> None:
    """Every name is pasted into Python code as an identifier, an attribute, a
    constructor argument or a method local: only names that cannot break, shadow or
    inject anything get through."""
    name = ident.name
    if name.startswith("_"):
        raise error(f"'{name}' starts with '_', which is reserved for generated code; "
                    f"choose another name for {what}", ident.span)
    if not IDENTIFIER.fullmatch(name):
        raise error(f"{name!r} is not a valid name for {what}: names are ASCII letters, "
                    "digits and '_', starting with a letter", ident.span)
    if name in KEYWORDS:
        raise error(f"'{name}' is a keyword of the language and cannot name {what}",
                    ident.span)
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        raise error(f"'{name}' is a Python keyword and cannot name {what}", ident.span)
    if name in FUNCTIONS:
        raise error(f"'{name}' is a built-in function and cannot name {what}", ident.span)
    if name in MODULE_NAMES:
        raise error(f"'{name}' is a module the generated code imports and cannot name "
                    f"{what}", ident.span)
    if name in PYTHON_BUILTINS:
        raise error(f"'{name}' is a Python built-in name and cannot name {what}: the "
                    "generated module would shadow it", ident.span)
    reserved = RESERVED_ATTRIBUTES - (ACCESSOR_NAMES if allow_method_names else set())
    if name in reserved and what != "the model":
        raise error(f"'{name}' is used by the generated module and cannot name {what}",
                    ident.span)
    if name in METHOD_LOCALS and what.endswith(" variable"):
        raise error(f"'{name}' is an argument or local name of the generated methods "
                    f"and cannot name {what}", ident.span)
    if name in DEFINITION_LOCALS and what in ("a definition", "a constrained parameter"):
        raise error(f"'{name}' is a local name of the generated methods and cannot name "
                    f"{what}", ident.span)
