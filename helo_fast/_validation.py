"""The one input-validation helper shared by every backend.

Every public op calls one ``validate_*`` function here before any kernel runs, so a bad input
raises the same ``TypeError``/``ValueError`` (naming the argument and what was expected) whatever
the backend. Checks of the tensor *values* (finiteness, signs, masses, the ranges that eps and the attention inputs
must keep) read them on the host in eager mode. While ``torch.compile`` traces, where a host read would break the
graph, the same checks are compiled into the graph instead (``_require``: torch._assert_async, no host sync): a
RuntimeError with the same message, without the offending values, on CPU tensors; a device-side assert on CUDA
tensors. Under torch.func.vmap they read the plain tensor underneath (``_transforms.plain``): they hold for every
vmapped sample.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Union

import torch

from ._numerics import LOW_PRECISION_DTYPES, compute_dtype
from ._transforms import plain

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
GRAD_MODES = ("none", "unrolled")
SINKHORN_GRAD_MODES = ("none", "unrolled", "implicit")  # implicit: the converged plan's gradient (needs tol)
OT_SOLVERS = ("ipot", "sinkhorn")
# Iteration counts are C++ int64 loop bounds and size the saved histories; beyond this they are a mistake.
MAX_ITERATIONS = 2**31 - 1


# A bound read from tensor values: a host float in eager mode, a 0-d tensor while torch.compile traces.
Bound = Union[float, torch.Tensor]


def _tracing() -> bool:
    return torch.compiler.is_compiling()


def _require(ok: Union[bool, torch.Tensor], message: str) -> None:
    """Raise ValueError(message) unless ``ok``. A 0-d bool tensor ``ok`` (while torch.compile traces) becomes a check
    compiled into the graph: torch._assert_async raises RuntimeError(message) on CPU tensors and is a device-side
    assert on CUDA ones, without a host sync."""
    if isinstance(ok, torch.Tensor):
        torch._assert_async(ok, message)
    elif not ok:
        raise ValueError(message)


def check_tensor(name: str, t, *, ndim: Optional[int] = None, dtypes: Sequence[torch.dtype] = FLOAT_DTYPES) -> None:
    """Raise TypeError unless ``t`` is a tensor of one of ``dtypes``; ValueError on wrong ndim."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type == "meta":
        raise ValueError(f"{name} is a meta tensor (shape only, no data); helo_fast ops compute on real tensors")
    if t.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({allowed}), got {str(t.dtype).replace('torch.', '')}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be a {ndim}-D tensor, got shape {tuple(t.shape)}")


def device_of(name: str, t) -> torch.device:
    """The device of tensor ``t``, raising TypeError first if ``t`` is not a float tensor."""
    check_tensor(name, t)
    return t.device


def check_shape(name: str, t: torch.Tensor, expected: Sequence[int], what: str) -> None:
    """Raise ValueError unless ``t.shape == expected``; ``what`` spells the expected shape in symbols."""
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {what} = {tuple(expected)}, got {tuple(t.shape)}")


def check_same(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    """Raise unless ``t`` has the dtype and device of ``ref``."""
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} must have the dtype of {ref_name} ({ref.dtype}), got {t.dtype}")
    if t.device != ref.device:
        raise ValueError(f"{name} must be on the device of {ref_name} ({ref.device}), got {t.device}")


def broadcastable_to(shape: Sequence[int], target: Sequence[int]) -> bool:
    """Whether a tensor of ``shape`` broadcasts to exactly ``target`` (each trailing size 1 or equal). The
    rule of torch.broadcast_shapes, which costs ~10 us per call (it goes through symbolic-shape checks)."""
    return len(shape) <= len(target) and all(s == 1 or s == t for s, t in zip(reversed(shape), reversed(target)))


def check_positive(name: str, value) -> float:
    """Raise unless ``value`` is a finite real number > 0; return it as float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float > 0, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite float > 0, got {value}")
    return float(value)


def check_probability(name: str, value) -> float:
    """Raise unless ``0 <= value < 1``; return it as float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float in [0, 1), got {type(value).__name__}")
    if not (0.0 <= value < 1.0):
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return float(value)


def check_int_at_least(name: str, value, minimum: int, maximum: Optional[int] = None) -> int:
    """Raise unless ``value`` is an int >= ``minimum`` (and <= ``maximum`` when given)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be an int <= {maximum}, got {value}")
    return value


def check_choice(name: str, value, choices: Sequence[str]) -> str:
    """Raise ValueError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_finite(name: str, t: torch.Tensor, *, skippable: bool = True) -> Bound:
    """Raise ValueError if ``t`` holds NaN or inf; return max |t| (0 for an empty t; a 0-d tensor, checked in the
    graph, while torch.compile traces). ``skippable``: whether the message may point at check_finite=False."""
    if t.numel() == 0:
        return 0.0
    # One pass: max |t| = max(-min, max) is NaN or inf exactly when an element is (aminmax and maximum propagate
    # NaN). On CPU aminmax is ~18x faster than linalg.vector_norm(ord=inf) (~0.13 vs 2.3 ms for a HeLo activation).
    if _tracing():
        low, high = torch.aminmax(t.detach())
        largest = torch.maximum(-low, high).double()  # bounds built from it must not overflow a half dtype
        _require(torch.isfinite(largest), _non_finite_message(name, skippable))
        return largest
    low, high = torch.aminmax(plain(t).detach())
    largest = float(torch.maximum(-low, high))
    if not math.isfinite(largest):
        raise ValueError(_non_finite_message(name, skippable))
    return largest


def check_symmetric(name: str, t: torch.Tensor) -> None:
    """Raise ValueError unless each matrix of ``t`` [B, n, n] equals its transpose to sqrt(its dtype's eps) times its
    largest entry (room for a distance matrix built by a matmul; the envelope gradient of a GW value assumes
    symmetry, and its error is of the order of the asymmetry)."""
    if t.numel() == 0:
        return
    x = plain(t).detach()
    scale = x.abs().amax((1, 2)) * torch.finfo(x.dtype).eps ** 0.5
    gap = (x - x.transpose(1, 2)).abs().amax((1, 2))
    if bool((gap > scale).any()):
        k = int((gap - scale).argmax())
        raise ValueError(
            f"{name} must be symmetric (each [n, n] matrix equal to its transpose): problem {k} "
            f"differs from its transpose by {float(gap[k]):.3g}; symmetrise it, e.g. "
            f"({name} + {name}ᵀ) / 2"
        )


def _non_finite_message(name: str, skippable: bool) -> str:
    hint = " (or check_finite=False to skip this check)" if skippable else ""
    return f"{name} contains NaN or inf; pass finite values{hint}"


def check_regularisation(name: str, value, dtype: torch.dtype, cost_bound: Bound) -> float:
    """The OT regularisation (eps / beta): a finite float of at least the compute dtype's smallest normal, small
    enough that no scaled cost exceeds 1 / the dtype's epsilon. ``cost_bound`` bounds max |cost| (0: unknown; a 0-d
    tensor while torch.compile traces: checked in the graph).

    Beyond that bound the plan's exponents (f + g - cost) / eps carry no correct digit in any implementation: the
    rounding of f, g and cost alone is larger than 1 in the exponent.
    """
    value = check_positive(name, value)
    info = torch.finfo(compute_dtype(dtype))
    if value < info.tiny:
        raise ValueError(f"{name} must be >= {info.tiny:.4g} (the smallest normal {info.dtype} number), got {value:g}")
    limit = 1.0 / info.eps
    if isinstance(cost_bound, torch.Tensor):
        _require(
            cost_bound <= limit * value,
            f"{name} is too small for the costs: max|cost| / {name} must be <= "
            f"{limit:.3g} in {info.dtype} (1 / its epsilon); rescale the costs or raise {name}",
        )
    elif cost_bound / value > limit:
        raise ValueError(
            f"{name} = {value:g} is too small for costs of magnitude {cost_bound:.4g}: max|cost| / {name} must be "
            f"<= {limit:.3g} in {info.dtype} (1 / its epsilon), got {cost_bound / value:.3g}; rescale the costs or "
            f"raise {name}"
        )
    return value


def _marginal(
    name: str, t: Optional[torch.Tensor], batch: int, size: int, sym: str, cost: torch.Tensor
) -> torch.Tensor:
    if t is None:
        return torch.full((batch, size), 1.0 / size, dtype=cost.dtype, device=cost.device)
    check_tensor(name, t, ndim=2)
    check_shape(name, t, (batch, size), f"[B, {sym}]")
    check_same(name, t, "cost", cost)
    check_finite(name, t, skippable=False)
    message = f"{name} must be non-negative (a marginal distribution), got a negative entry"
    _require(~(t < 0).any() if _tracing() else not bool((plain(t) < 0).any()), message)
    return t


def validate_marginals(a, b, cost: torch.Tensor, *, cost_name: str = "cost"):
    """Fill ``None`` marginals with uniform ones and check a [B,n], b [B,m] have equal positive mass: equal within
    a relative ``tol`` (1e-10 in float64, 1e-5 in float32, 1e-4 in half) of the larger mass, whatever its scale.

    cost: [B, n, m] (only its sizes, dtype and device are used).
    Returns (a, b).
    """
    batch, n, m = cost.shape
    a = _marginal("a", a, batch, n, "n", cost)
    b = _marginal("b", b, batch, m, "m", cost)
    mass_a, mass_b = a.sum(-1), b.sum(-1)
    tol = 1e-4 if a.dtype in LOW_PRECISION_DTYPES else (1e-5 if a.dtype == torch.float32 else 1e-10)
    gap = (mass_a - mass_b).abs()
    unequal = gap > tol * torch.maximum(mass_a, mass_b)
    positive_message = "a must have positive total mass in every batch entry"
    equal_message = f"a and b must have equal total mass per batch entry (within {tol:g}, relative)"
    if _tracing():
        _require((mass_a > 0).all(), positive_message)
        _require(~unequal.any(), equal_message)
        return a, b
    _require(not bool(plain(mass_a <= 0).any()), positive_message)
    if bool(plain(unequal).any()):
        relative = float(plain(gap / torch.maximum(mass_a, mass_b)).max())
        raise ValueError(f"{equal_message}; got |sum(a) - sum(b)| / max(sum(a), sum(b)) = {relative:.3g}")
    return a, b


def check_convergence_options(tol, return_info, strict, grad: str) -> None:
    """The stopping options of the OT ops: ``tol`` None or a finite float > 0; ``return_info`` and ``strict`` bools
    that need ``tol`` (without it there is no test to report on); grad="implicit" needs ``tol`` too."""
    if tol is not None:
        check_positive("tol", tol)
    for name, value in (("return_info", return_info), ("strict", strict)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
        if value and tol is None:
            raise ValueError(
                f"{name}=True needs tol (a float > 0): without tol the op runs exactly its iteration "
                "count and has no convergence test"
            )
    if grad == "implicit" and tol is None:
        raise ValueError("grad='implicit' needs tol (a float > 0): it is the gradient of the converged plan")


def validate_ot(
    cost,
    a,
    b,
    *,
    n_iters,
    grad: str,
    check_finite_values: bool = True,
    eps=None,
    beta=None,
    tol=None,
    return_info: bool = False,
    strict: bool = False,
):
    """Validate a batched OT problem; return (a, b) with ``None`` replaced by uniform marginals.

    cost: [B, n, m] float tensor (B may be 0); a: [B, n] or None; b: [B, m] or None; exactly one of ``eps``
    (Sinkhorn) and ``beta`` (IPOT), named as such in the errors; the stopping options as
    ``check_convergence_options`` (grad="implicit" for Sinkhorn only).
    """
    if (eps is None) == (beta is None):
        raise TypeError("validate_ot takes exactly one of eps (sinkhorn) and beta (ipot)")
    name, value = ("eps", eps) if beta is None else ("beta", beta)
    check_tensor("cost", cost, ndim=3)
    if cost.shape[1] < 1 or cost.shape[2] < 1:
        raise ValueError(f"cost must have shape [B, n, m] with n, m >= 1, got {tuple(cost.shape)}")
    check_int_at_least("n_iters", n_iters, 1, MAX_ITERATIONS)
    if grad == "implicit" and beta is not None:
        raise ValueError("grad='implicit' is implemented for sinkhorn only; ipot takes grad 'none' or 'unrolled'")
    check_choice("grad", grad, SINKHORN_GRAD_MODES if beta is None else GRAD_MODES)
    check_convergence_options(tol, return_info, strict, grad)
    cost_bound = check_finite("cost", cost) if check_finite_values else 0.0
    check_regularisation(name, value, cost.dtype, cost_bound)
    return validate_marginals(a, b, cost)


def validate_gromov_wasserstein(
    cs,
    ct,
    a,
    b,
    *,
    eps,
    outer_iters,
    inner_iters,
    solver: str,
    grad: str,
    check_finite_values: bool = True,
    tol=None,
    return_info: bool = False,
    strict: bool = False,
):
    """Validate a batched Gromov-Wasserstein problem; return (a, b) with uniform defaults.

    cs: [B, n, n] source structure matrix; ct: [B, m, m] target structure matrix; the stopping options as
    ``check_convergence_options``.
    """
    check_tensor("cs", cs, ndim=3)
    check_tensor("ct", ct, ndim=3)
    if cs.shape[1] != cs.shape[2] or cs.shape[1] < 1:
        raise ValueError(f"cs must have shape [B, n, n], got {tuple(cs.shape)}")
    if ct.shape[1] != ct.shape[2] or ct.shape[1] < 1:
        raise ValueError(f"ct must have shape [B, m, m], got {tuple(ct.shape)}")
    if ct.shape[0] != cs.shape[0]:
        raise ValueError(f"ct must have the batch size of cs ({cs.shape[0]}), got {ct.shape[0]}")
    check_same("ct", ct, "cs", cs)
    check_int_at_least("outer_iters", outer_iters, 1, MAX_ITERATIONS)
    check_int_at_least("inner_iters", inner_iters, 1, MAX_ITERATIONS)
    check_choice("solver", solver, OT_SOLVERS)
    if grad == "implicit":
        raise ValueError(
            "grad='implicit' is not implemented for gromov_wasserstein: its outer loop is a fixed point "
            "of a non-convex problem that need not be locally unique; use grad='unrolled'"
        )
    check_choice("grad", grad, GRAD_MODES)
    check_convergence_options(tol, return_info, strict, grad)
    structure_bound = check_finite("cs", cs) + check_finite("ct", ct) if check_finite_values else 0.0
    check_positive("eps", eps)
    # Marginals are checked against a virtual [B, n, m] cost.
    a, b = validate_marginals(a, b, _SizeOnly(cs, ct.shape[1]))
    # Every linearised cost is at most (max|cs| + max|ct|)^2 times the total mass (HELO_SPEC §4.4).
    mass: Bound = 0.0
    if check_finite_values and a.numel():
        mass = a.detach().sum(-1).max() if _tracing() else float(plain(a.detach().sum(-1)).max())
    check_regularisation("eps", eps, cs.dtype, structure_bound**2 * mass)
    return a, b


class _SizeOnly:
    """Stand-in for a [B, n, m] cost: carries shape, dtype and device without allocating."""

    def __init__(self, cs: torch.Tensor, m: int):
        self.shape = (cs.shape[0], cs.shape[1], m)
        self.dtype = cs.dtype
        self.device = cs.device


def check_layer_norm_parameter(name: str, t: torch.Tensor, q: torch.Tensor) -> None:
    """A LayerNorm parameter of lcd_attention has q's dtype, or float32 when q is float16/bfloat16 (torch.autocast
    keeps LayerNorm parameters in float32), and q's device."""
    if t.dtype != q.dtype and not (q.dtype in LOW_PRECISION_DTYPES and t.dtype == torch.float32):
        also = " or float32" if q.dtype in LOW_PRECISION_DTYPES else ""
        raise TypeError(f"{name} must have the dtype of q ({q.dtype}){also}, got {t.dtype}")
    if t.device != q.device:
        raise ValueError(f"{name} must be on the device of q ({q.device}), got {t.device}")


def validate_attention(
    q,
    k,
    v,
    bias,
    residual,
    ln_weight,
    ln_bias,
    *,
    scale,
    dropkey_p,
    dropout_p,
    ln_eps,
    dropkey_mask=None,
    dropout_mask=None,
    check_finite_values: bool = True,
):
    """Validate the inputs of ``lcd_attention``; return the effective scale.

    q: [B, H, Lq, D]; k, v: [B, H, Lk, D]; bias broadcastable to [B, H, Lq, Lk];
    residual: [B, Lq, H*D]; ln_weight, ln_bias: [H*D]; masks: bool [B, H, Lq, Lk].
    """
    check_tensor("q", q, ndim=4)
    check_tensor("k", k, ndim=4)
    check_tensor("v", v, ndim=4)
    batch, heads, lq, dim = q.shape
    lk = k.shape[2]
    if min(heads, lq, dim) < 1 or lk < 1:
        raise ValueError(f"q must have shape [B, H, Lq, D] with H, Lq, D >= 1 (B may be 0), got {tuple(q.shape)}")
    check_shape("k", k, (batch, heads, lk, dim), "[B, H, Lk, D]")
    check_shape("v", v, (batch, heads, lk, dim), "[B, H, Lk, D]")
    check_same("k", k, "q", q)
    check_same("v", v, "q", q)
    if bias is not None:
        check_tensor("bias", bias)
        check_same("bias", bias, "q", q)
        if not broadcastable_to(bias.shape, (batch, heads, lq, lk)):
            raise ValueError(
                f"bias must be broadcastable to [B, H, Lq, Lk] = {(batch, heads, lq, lk)}, got {tuple(bias.shape)}"
            )
    if residual is not None:
        check_tensor("residual", residual, ndim=3)
        check_shape("residual", residual, (batch, lq, heads * dim), "[B, Lq, H*D]")
        check_same("residual", residual, "q", q)
    if ln_bias is not None and ln_weight is None:
        raise ValueError("ln_bias needs ln_weight: LayerNorm is applied when ln_weight is given")
    for name, t in (("ln_weight", ln_weight), ("ln_bias", ln_bias)):
        if t is not None:
            check_tensor(name, t, ndim=1)
            check_shape(name, t, (heads * dim,), "[H*D]")
            check_layer_norm_parameter(name, t, q)
    for name, t in (("dropkey_mask", dropkey_mask), ("dropout_mask", dropout_mask)):
        if t is not None:
            check_tensor(name, t, dtypes=(torch.bool,))
            check_shape(name, t, (batch, heads, lq, lk), "[B, H, Lq, Lk]")
            if t.device != q.device:
                raise ValueError(f"{name} must be on the device of q ({q.device}), got {t.device}")
    check_probability("dropkey_p", dropkey_p)
    check_probability("dropout_p", dropout_p)
    check_positive("ln_eps", ln_eps)
    if scale is None:
        scale = dim**-0.5
    else:
        scale = check_positive("scale", scale)
    if check_finite_values:
        largest = {
            name: check_finite(name, t)
            for name, t in (
                ("q", q),
                ("k", k),
                ("v", v),
                ("bias", bias),
                ("residual", residual),
                ("ln_weight", ln_weight),
                ("ln_bias", ln_bias),
            )
            if t is not None
        }
        check_attention_range(
            largest,
            compute_dtype(q.dtype),
            dim=dim,
            features=heads * dim,
            scale=scale,
            dropout_p=dropout_p,
            layer_norm=ln_weight is not None,
        )
    return scale


def check_attention_range(
    largest: Dict[str, Bound],
    dtype: torch.dtype,
    *,
    dim: int,
    features: int,
    scale: float,
    dropout_p: float,
    layer_norm: bool,
) -> None:
    """Refuse finite attention inputs whose intermediates can overflow the compute dtype (q = k = 1e20 in float32:
    the logits are inf, the softmax NaN). From the inputs' largest magnitudes ``largest`` (by argument name):
    - the logits: (D max|q| max|k| + max|bias|) max(scale, 1) must be at most the dtype's largest finite value;
    - y = attention output + residual, |y| <= max|v| / (1 - dropout_p) + max|residual|: with LayerNorm its squared
      deviations summed over the H*D features, (2 |y|)^2 H D, must be at most that value, without it |y| itself.
    Sufficient bounds (a input may be refused whose actual logits would not overflow: its sizes are ~1e18 in
    float32, ~1e153 in float64)."""
    finite_max = _FINITE_MAX[dtype]
    logits = (dim * largest["q"] * largest["k"] + largest.get("bias", 0.0)) * max(scale, 1.0)
    output = largest["v"] / (1.0 - dropout_p) + largest.get("residual", 0.0)
    spread = (2.0 * output) * (2.0 * output) * features if layer_norm else output
    for bound, what, inputs in (
        (logits, "(D max|q| max|k| + max|bias|) * max(scale, 1), bounding the logits", "q, k or bias"),
        (
            spread,
            "(2 (max|v| / (1 - dropout_p) + max|residual|))^2 * H*D, bounding the LayerNorm variance's sum"
            if layer_norm
            else "max|v| / (1 - dropout_p) + max|residual|, bounding the output",
            "v or residual",
        ),
    ):
        if isinstance(bound, torch.Tensor) or not bound <= finite_max:  # the message is built only when needed
            message = (
                f"the inputs of lcd_attention are too large for {dtype}: {what}, must be <= {finite_max:.3g} "
                f"(its largest finite value; beyond it the result can overflow to inf or NaN); rescale "
                f"{inputs}"
            )
            _require(bound <= finite_max, message if isinstance(bound, torch.Tensor) else f"{message}; got {bound:.3g}")


_FINITE_MAX = {dtype: torch.finfo(dtype).max for dtype in (torch.float32, torch.float64)}  # the compute dtypes


MAX_DROPOUT_NUMEL = 2**32  # the mask hash indexes elements modulo 2**32


def validate_dropout(x, p) -> float:
    """Validate the inputs of ``seeded_dropout``; return p as float. x: a float tensor of any shape with at most
    2**32 elements (the mask index is 32 bits); p in [0, 1)."""
    check_tensor("x", x)
    p = check_probability("p", p)
    if x.numel() > MAX_DROPOUT_NUMEL:
        raise ValueError(f"x must have at most 2**32 elements (the dropout mask index is 32-bit), got {x.numel()}")
    return p
