"""Tensor primitives shared by every algorithm: masked statistics, log-probs, entropy and KL estimators.

Conventions: ``mask`` is a bool tensor broadcastable to ``x`` with True = real token. Masked-out values never
influence a result (they are selected away with ``torch.where``, so even NaN/inf padding is harmless), and no
function modifies its inputs.
"""

import functools
from collections.abc import Callable

import torch

KL_KINDS = ("k1", "k2", "k3")

ReduceSum = Callable[[torch.Tensor], torch.Tensor]
"""Sums a tensor over data-parallel processes (``rlhflab.distributed.Dist.sum``); None = this process only."""


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of the valid entries: ``Σ_{mask} x`` over ``dim`` (all dims when None → scalar)."""
    kept = torch.where(mask, x, 0.0)
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(
    x: torch.Tensor, mask: torch.Tensor, dim: int | None = None, reduce_sum: ReduceSum | None = None
) -> torch.Tensor:
    """Mean of the valid entries: ``Σ_{mask} x / Σ mask`` over ``dim`` (all dims when None → scalar).

    An all-False mask along the reduced dimension gives NaN (0/0), as the mean of nothing is undefined.
    ``reduce_sum`` (data-parallel training, ``dim=None`` only) sums a tensor over the processes
    (:meth:`rlhflab.distributed.Dist.sum`): the sum and the count are then those of the global batch.
    """
    if reduce_sum is not None:
        if dim is not None:
            raise ValueError("masked_mean: reduce_sum needs dim=None (a mean over the whole global batch)")
        return reduce_sum(masked_sum(x, mask)) / reduce_sum(mask.sum())
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(x, mask, dim) / count


def masked_var(
    x: torch.Tensor, mask: torch.Tensor, unbiased: bool = False, reduce_sum: ReduceSum | None = None
) -> torch.Tensor:
    """Variance of all valid entries (scalar): ``mean_{mask}((x − mean_{mask} x)²)``.

    Biased (divide by n) by default; ``unbiased=True`` rescales by ``n / (n − 1)`` and needs n ≥ 2.
    ``reduce_sum``: as in :func:`masked_mean`, the variance of the global batch (two all-reduces: mean, then
    squared deviations from that global mean).
    """
    mean = masked_mean(x, mask, reduce_sum=reduce_sum)
    var = masked_mean((x - mean) ** 2, mask, reduce_sum=reduce_sum)
    if unbiased:
        n = mask.sum() if reduce_sum is None else reduce_sum(mask.sum())
        if n < 2:
            raise ValueError(f"unbiased masked_var needs at least 2 valid entries, got {int(n)}")
        var = var * n / (n - 1)
    return var


def masked_whiten(
    x: torch.Tensor,
    mask: torch.Tensor,
    shift_mean: bool = True,
    eps: float = 1e-8,
    reduce_sum: ReduceSum | None = None,
) -> torch.Tensor:
    """Standardise over the valid entries: ``(x − μ) / sqrt(σ² + eps)`` with the biased masked variance σ².

    With ``shift_mean=False`` the mean is added back (``(x − μ) / sqrt(σ² + eps) + μ``): only the spread is
    rescaled, which keeps the sign information of e.g. advantages whose mean carries signal.
    Masked-out positions are returned as 0. ``reduce_sum``: μ and σ² of the global batch of all data-parallel
    processes, from all-reduced sums and counts (see :func:`masked_mean`); each process whitens its own rows.
    """
    mean = masked_mean(x, mask, reduce_sum=reduce_sum)
    whitened = (x - mean) * torch.rsqrt(masked_var(x, mask, reduce_sum=reduce_sum) + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask, whitened, 0.0)


def _in_fp32_rows(fn: Callable[[torch.Tensor], torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
    """Apply ``fn`` to logits in at least fp32 precision.

    Low-precision logits are upcast one batch row at a time, so at most one ``(T, V)`` fp32 copy exists
    during the forward pass instead of a full ``(B, T, V)`` one.
    """
    if logits.dtype in (torch.float32, torch.float64):
        return fn(logits)
    return torch.stack([fn(row.float()) for row in logits])


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-probability of ``tokens`` under ``softmax(logits / temperature)``.

    ``log p(y_t) = z_{t, y_t} − logsumexp_v z_{t, v}`` with ``z = logits / temperature``.
    logits (B, T, V), tokens (B, T) → (B, T), in fp32 (or fp64 for fp64 logits).
    Computed as gather − logsumexp so no ``(B, T, V)`` log-softmax is materialised; the backward writes the
    gradient into one ``(B, T, V)`` buffer (see :class:`_TokenLogprobs`).
    """
    return _TokenLogprobs.apply(logits, tokens, temperature)


class _TokenLogprobs(torch.autograd.Function):
    """:func:`logprobs_from_logits` with a frugal backward. Autograd's backward of gather − logsumexp holds four
    ``(B, T, V)`` temporaries at once (softmax, its product with the gradient, the scattered one-hot, their sum);
    this one builds ``∂/∂logits = (onehot(y) − softmax(z)) · g / τ`` in place in one buffer: the same gradients, a
    lower peak (docs/benchmarks.md, "What was made faster")."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
        lse = _in_fp32_rows(lambda z: torch.logsumexp(_scaled(z, temperature), dim=-1), logits)  # (B, T)
        picked = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).to(lse.dtype)  # (B, T)
        ctx.save_for_backward(logits, tokens, lse)
        ctx.temperature = temperature
        return _scaled(picked, temperature) - lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):  # grad (B, T)
        logits, tokens, lse = ctx.saved_tensors
        temperature = ctx.temperature
        scaled_grad = (grad / temperature).to(lse.dtype).unsqueeze(-1)  # (B, T, 1): g / τ

        def logits_grad(z, tok, row_lse, g):  # z (.., V) in lse's precision; a new buffer, z is not touched
            out = torch.sub(z, row_lse.unsqueeze(-1), alpha=temperature)  # z − τ·lse
            if temperature != 1.0:
                out.div_(temperature)  # z / τ − lse = log softmax(z / τ)
            out.exp_().mul_(-g)  # −softmax · g / τ
            return out.scatter_add_(-1, tok.unsqueeze(-1), g)  # + onehot(y) · g / τ

        if logits.dtype == lse.dtype:
            return logits_grad(logits, tokens, lse, scaled_grad), None, None
        # low precision: one fp32 (T, V) row at a time, as in the forward
        out = torch.empty_like(logits)
        for b in range(logits.shape[0]):
            out[b] = logits_grad(logits[b].to(lse.dtype), tokens[b], lse[b], scaled_grad[b])
        return out, None, None


VOCAB_BLOCK = 4096
"""Vocabulary rows per block in :func:`logprobs_from_hidden`. Its largest temporary is one (N, 4096) block of
logits; at the Pythia-410m head, blocks of 2048–8192 rows all ran faster than one (N, V) product with its
log-softmax (docs/benchmarks.md)."""


def logprobs_from_hidden(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    tokens: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`logprobs_from_logits` of ``logits = hidden @ weightᵀ + bias`` (a frozen LM head), and optionally
    :func:`entropy_from_logits`, without ever holding the (B, T, V) logits.

    hidden (B, T, H), weight (V, H), bias (V,) or None, tokens (B, T) → logprobs (B, T) and entropy (B, T) or None,
    in fp32 (fp64 for fp64 inputs); the entropy carries no gradient, the weight and bias get none.
    One pass over the vocabulary, ``VOCAB_BLOCK`` rows at a time, with a running max ``m`` and running sums rescaled
    by ``exp(m_old − m_new)`` whenever the max grows (the online log-sum-exp):
    ``s = Σ_v e_v`` with ``e_v = exp(z_v − m)``, ``z = logits / τ``; ``log p(y) = z_y − (m + log s)``;
    ``H = m + log s − Σ_v e_v z_v / s``. For the backward the same pass accumulates ``Σ_v e_v W_v`` and keeps the
    Jacobian ``∂ log p(y) / ∂h = (W_y − Σ_v p_v W_v) / τ`` (B, T, H): the same product the usual backward runs
    (its logits gradient times W), done in the forward, so the backward is one multiply by the incoming gradient.
    """
    return _HiddenTokenLogprobs.apply(hidden, weight, bias, tokens, temperature, with_entropy)


class _HiddenTokenLogprobs(torch.autograd.Function):
    """:func:`logprobs_from_hidden`: a (B, T, H) Jacobian is saved instead of (B, T, V) logits (at the Pythia-410m
    shape a micro-batch of 2 rows × 48 tokens: 0.4 MiB instead of 18 MiB of logits plus 18 MiB of their gradient)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, tokens, temperature: float, with_entropy: bool):
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            raise ValueError("logprobs_from_hidden: the LM head must be frozen (no gradient for weight or bias)")
        with_jacobian = ctx.needs_input_grad[0]
        h, y = hidden.reshape(-1, hidden.shape[-1]), tokens.reshape(-1)  # (N, H), (N,)
        dtype = torch.promote_types(hidden.dtype, torch.float32)
        zeros = functools.partial(torch.zeros, dtype=dtype, device=hidden.device)
        running_max = torch.full((h.shape[0],), float("-inf"), dtype=dtype, device=hidden.device)  # m (N,)
        exp_sum, picked = zeros(h.shape[0]), zeros(h.shape[0])  # s, z_y (N,)
        exp_z_sum = zeros(h.shape[0]) if with_entropy else None  # Σ e_v z_v (N,)
        exp_weight_sum = zeros(h.shape) if with_jacobian else None  # Σ e_v W_v (N, H)
        for start in range(0, weight.shape[0], VOCAB_BLOCK):
            block = weight[start : start + VOCAB_BLOCK]  # (v, H)
            block_bias = None if bias is None else bias[start : start + VOCAB_BLOCK]
            z = _scaled(torch.nn.functional.linear(h, block, block_bias).to(dtype), temperature)  # (N, v)
            local = y - start
            inside = (local >= 0) & (local < block.shape[0])
            picked = torch.where(inside, z.gather(1, local.clamp(0, block.shape[0] - 1)[:, None])[:, 0], picked)
            new_max = torch.maximum(running_max, z.amax(1))
            rescale = torch.exp(running_max - new_max)  # (N,): 0 at the first block
            e = torch.exp(z - new_max[:, None])  # (N, v)
            exp_sum = exp_sum * rescale + e.sum(1)
            if exp_z_sum is not None:
                exp_z_sum = exp_z_sum * rescale + (e * z).sum(1)
            if exp_weight_sum is not None:
                exp_weight_sum.mul_(rescale[:, None]).add_((e.to(block.dtype) @ block).to(dtype))
            running_max = new_max
        lse = running_max + exp_sum.log()  # (N,)
        logprobs = (picked - lse).view(tokens.shape)
        entropy = None
        if exp_z_sum is not None:
            entropy = (lse - exp_z_sum / exp_sum).view(tokens.shape)
            ctx.mark_non_differentiable(entropy)
        if exp_weight_sum is not None:
            jacobian = (weight[y].to(dtype) - exp_weight_sum / exp_sum[:, None]) / temperature  # (N, H)
            ctx.save_for_backward(jacobian)
        ctx.hidden_shape, ctx.hidden_dtype = hidden.shape, hidden.dtype
        return logprobs, entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor, _grad_entropy):  # grad (B, T)
        (jacobian,) = ctx.saved_tensors
        grad_hidden = grad.reshape(-1, 1).to(jacobian.dtype) * jacobian  # (N, H)
        return grad_hidden.view(ctx.hidden_shape).to(ctx.hidden_dtype), None, None, None, None, None


def _scaled(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """``z / temperature``, without the (B, T, V) copy (and its backward) when the temperature is 1."""
    return z if temperature == 1.0 else z / temperature


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of ``softmax(logits / temperature)`` per position: ``H = −Σ_v p_v log p_v``.

    logits (B, T, V) → (B, T), in fp32 (or fp64 for fp64 logits).
    """

    def entropy(z: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(_scaled(z, temperature), dim=-1)
        return -(logp.exp() * logp).sum(-1)

    return _in_fp32_rows(entropy, logits)


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token estimators of KL(π ‖ π_ref) from samples of π (Schulman, "Approximating KL Divergence").

    With ``d = logprobs − ref_logprobs`` (elementwise):

    - ``'k1'``: ``d`` — unbiased, high variance, can be negative per token.
    - ``'k2'``: ``½ d²`` — biased, low variance, ≥ 0, symmetric in its arguments.
    - ``'k3'``: ``exp(−d) − 1 + d`` = ``exp(ref − logp) − 1 − (ref − logp)`` — unbiased, ≥ 0.
    """
    if kind not in KL_KINDS:
        raise ValueError(f"unknown KL estimator {kind!r}; valid kinds are {KL_KINDS}")
    log_ratio = logprobs - ref_logprobs
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    return torch.expm1(-log_ratio) + log_ratio  # expm1 keeps precision when logp ≈ ref
