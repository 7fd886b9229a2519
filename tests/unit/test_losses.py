"""Tests for rlhflab.algorithms.losses: hand-computed cases, loop references, gradients, micro-batching."""

import math

import pytest
import torch

from rlhflab.algorithms.advantages import expand_to_tokens
from rlhflab.algorithms.losses import (
    aggregate,
    clipped_surrogate,
    explained_variance,
    grpo_loss,
    ppo_policy_loss,
    value_loss,
)
from rlhflab.ops import masked_mean

F64 = torch.float64
MODES = ("token_mean", "seq_mean", "seq_sum_constant")


def t64(rows):
    return torch.tensor(rows, dtype=F64)


def prefix_mask(lengths, t):
    return torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]


def aggregate_reference(loss, mask, mode, num_tokens=None, num_seqs=None, max_len=None):
    """Plain-loop aggregation over python floats."""
    rows = [[v for v, m in zip(lr, mr, strict=True) if m] for lr, mr in zip(loss.tolist(), mask.tolist(), strict=True)]
    b_size, t_size = loss.shape
    num_seqs = b_size if num_seqs is None else num_seqs
    if mode == "token_mean":
        return sum(map(sum, rows)) / (sum(map(len, rows)) if num_tokens is None else num_tokens)
    if mode == "seq_mean":
        return sum(sum(r) / len(r) for r in rows) / num_seqs
    return sum(map(sum, rows)) / (num_seqs * (t_size if max_len is None else max_len))


def surrogate_reference(logprobs, old_logprobs, advantages, clip_eps, clip_eps_high):
    out = []
    for lp_row, old_row, a_row in zip(logprobs.tolist(), old_logprobs.tolist(), advantages.tolist(), strict=True):
        row = []
        for lp, old, a in zip(lp_row, old_row, a_row, strict=True):
            ratio = math.exp(lp - old)
            row.append(max(-a * ratio, -a * min(max(ratio, 1 - clip_eps), 1 + clip_eps_high)))
        out.append(row)
    return torch.tensor(out, dtype=F64)


def random_batch(b=6, t=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    lengths[0] = t
    mask = torch.arange(t)[None, :] < lengths[:, None]
    draw = lambda scale=1.0: torch.randn(b, t, generator=g, dtype=F64) * scale  # noqa: E731
    return draw, mask


# ----------------------------------------------------------------------------------------- aggregate

LOSS = t64([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, 100.0, 100.0]])
LOSS_MASK = prefix_mask([3, 2], 4)


def test_aggregate_hand_values():
    # valid: row0 [1, 2, 3] (sum 6, mean 2), row1 [4, 5] (sum 9, mean 4.5); 5 tokens, B=2, T=4
    assert aggregate(LOSS, LOSS_MASK, "token_mean").item() == pytest.approx(15 / 5, abs=1e-12)
    assert aggregate(LOSS, LOSS_MASK, "token_mean", num_tokens=10).item() == pytest.approx(1.5, abs=1e-12)
    assert aggregate(LOSS, LOSS_MASK, "seq_mean").item() == pytest.approx((2 + 4.5) / 2, abs=1e-12)
    assert aggregate(LOSS, LOSS_MASK, "seq_mean", num_seqs=4).item() == pytest.approx(6.5 / 4, abs=1e-12)
    assert aggregate(LOSS, LOSS_MASK, "seq_sum_constant").item() == pytest.approx(15 / (2 * 4), abs=1e-12)
    out = aggregate(LOSS, LOSS_MASK, "seq_sum_constant", num_seqs=3, max_len=10)
    assert out.item() == pytest.approx(15 / 30, abs=1e-12)


def test_aggregate_one_dim_and_no_mask():
    loss = t64([1.0, 2.0, 6.0])
    for mode in MODES:  # (B,) is treated as (B, 1): every mode is the plain mean
        assert aggregate(loss, None, mode).item() == pytest.approx(3.0, abs=1e-12)
    assert aggregate(loss, torch.tensor([True, True, False]), "token_mean").item() == pytest.approx(1.5)


def test_aggregate_matches_loop_reference():
    for seed in range(3):
        draw, mask = random_batch(seed=seed)
        loss = draw()
        for mode in MODES:
            for kw in ({}, {"num_tokens": 50, "num_seqs": 9, "max_len": 11}):
                want = aggregate_reference(loss, mask, mode, **kw)
                assert aggregate(loss, mask, mode, **kw).item() == pytest.approx(want, abs=1e-9)


def test_aggregate_bad_mode():
    with pytest.raises(ValueError, match="token_mean.*seq_mean.*seq_sum_constant"):
        aggregate(LOSS, LOSS_MASK, "mean")


def _full_and_micro_grads(mode, split, pass_normalizers=True):
    draw, mask = random_batch(b=6, t=7, seed=3)
    feats = torch.stack([draw(), draw(), draw()], dim=-1)  # (B, T, 3)
    w = torch.tensor([0.3, -1.2, 0.7], dtype=F64, requires_grad=True)

    def loss_of(rows):
        loss_tokens = (feats[rows] @ w) ** 2 + feats[rows, :, 0] * w[1]
        kw = {"num_tokens": mask.sum(), "num_seqs": 6, "max_len": 7} if pass_normalizers else {}
        return aggregate(loss_tokens, mask[rows], mode, **kw)

    (full_grad,) = torch.autograd.grad(loss_of(slice(0, 6)), w)
    micro_grad = torch.zeros_like(w)
    for rows in (slice(0, split), slice(split, 6)):
        micro_grad += torch.autograd.grad(loss_of(rows), w)[0]
    return full_grad, micro_grad


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("split", [2, 3])
def test_micro_batch_accumulation_equals_full_batch(mode, split):
    full_grad, micro_grad = _full_and_micro_grads(mode, split)
    torch.testing.assert_close(micro_grad, full_grad, atol=1e-6, rtol=0)


def test_micro_batch_accumulation_needs_full_batch_normalizers():
    # without the full-batch normalizers, summed micro-batch gradients are wrong (guards the test above)
    for mode in MODES:
        full_grad, micro_grad = _full_and_micro_grads(mode, 2, pass_normalizers=False)
        assert (micro_grad - full_grad).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------- ppo_policy_loss


def test_ppo_ratio_one():
    draw, mask = random_batch(seed=1)
    logprobs, advantages = draw(), draw()
    loss, stats = ppo_policy_loss(logprobs, logprobs.clone(), advantages, mask)
    assert loss.item() == pytest.approx(-masked_mean(advantages, mask).item(), abs=1e-12)
    assert stats["clipfrac"].item() == 0.0
    assert stats["approxkl"].item() == 0.0
    assert stats["ratio"].item() == 1.0
    assert set(stats) == {"clipfrac", "approxkl", "ratio"}
    assert all(v.dim() == 0 and not v.requires_grad for v in stats.values())


# one row, 5 valid tokens + 1 padding token; clip_eps = 0.2
HAND_ADV = t64([[1.0, 1.0, -1.0, -1.0, 2.0, 7.0]])
HAND_RATIO = [1.5, 0.5, 1.5, 0.5, 1.1, 3.0]
HAND_MASK = prefix_mask([5], 6)


def hand_logprobs():
    old = t64([[-1.0, -2.0, -0.5, -3.0, -1.5, -1.0]])
    logprobs = (old + torch.log(t64([HAND_RATIO]))).requires_grad_()
    return logprobs, old


def test_ppo_hand_clipping_positive_and_negative_advantages():
    logprobs, old = hand_logprobs()
    loss, stats = ppo_policy_loss(logprobs, old, HAND_ADV, HAND_MASK, clip_eps=0.2)
    # A=+1 ρ=1.5: max(-1.5, -1.2) = -1.2   clipped (no gradient)
    # A=+1 ρ=0.5: max(-0.5, -0.8) = -0.5   unclipped, d/dlogp = -Aρ = -0.5
    # A=-1 ρ=1.5: max(1.5, 1.2)   = 1.5    unclipped, d/dlogp = -Aρ = 1.5
    # A=-1 ρ=0.5: max(0.5, 0.8)   = 0.8    clipped (no gradient)
    # A=+2 ρ=1.1: max(-2.2, -2.2) = -2.2   inside the trust region, d/dlogp = -2.2
    # token mean over 5: (-1.2 - 0.5 + 1.5 + 0.8 - 2.2) / 5 = -0.32
    assert loss.item() == pytest.approx(-0.32, abs=1e-12)
    assert stats["clipfrac"].item() == pytest.approx(2 / 5, abs=1e-7)
    assert stats["ratio"].item() == pytest.approx((1.5 + 0.5 + 1.5 + 0.5 + 1.1) / 5, abs=1e-7)
    ln = [math.log(r) for r in HAND_RATIO[:5]]
    assert stats["approxkl"].item() == pytest.approx(sum(0.5 * x * x for x in ln) / 5, abs=1e-7)
    loss.backward()
    torch.testing.assert_close(logprobs.grad, t64([[0.0, -0.5, 1.5, 0.0, -2.2, 0.0]]) / 5, atol=1e-12, rtol=0)


def test_ppo_hand_clip_higher():
    logprobs, old = hand_logprobs()
    loss, stats = ppo_policy_loss(logprobs, old, HAND_ADV, HAND_MASK, clip_eps=0.2, clip_eps_high=0.6)
    # ρ=1.5 with A=+1 is now inside [0.8, 1.6]: -1.5; A=-1 ρ=0.5 still clipped at 0.8 (low side unchanged)
    # (-1.5 - 0.5 + 1.5 + 0.8 - 2.2) / 5 = -0.38
    assert loss.item() == pytest.approx(-0.38, abs=1e-12)
    assert stats["clipfrac"].item() == pytest.approx(1 / 5, abs=1e-7)
    loss.backward()
    torch.testing.assert_close(logprobs.grad, t64([[-1.5, -0.5, 1.5, 0.0, -2.2, 0.0]]) / 5, atol=1e-12, rtol=0)


def test_clipped_surrogate_indicator_and_shapes():
    logprobs, old = hand_logprobs()
    loss_tokens, is_clipped, ratio = clipped_surrogate(logprobs, old, HAND_ADV, clip_eps=0.2)
    assert is_clipped.dtype == torch.bool
    assert is_clipped[0, :5].tolist() == [True, False, False, True, False]
    torch.testing.assert_close(ratio.detach(), t64([HAND_RATIO]))
    torch.testing.assert_close(loss_tokens[0, :5].detach(), t64([-1.2, -0.5, 1.5, 0.8, -2.2]), atol=1e-12, rtol=0)


@pytest.mark.parametrize("mode", MODES)
def test_ppo_matches_loop_reference_unequal_lengths(mode):
    for seed in range(3):
        draw, mask = random_batch(seed=seed)
        old, advantages = draw(), draw()
        logprobs = old + draw(0.3)  # ratios spread around 1 so both branches occur
        for eps, eps_high in ((0.2, None), (0.1, 0.3)):
            loss, stats = ppo_policy_loss(logprobs, old, advantages, mask, eps, eps_high, agg=mode)
            per_token = surrogate_reference(logprobs, old, advantages, eps, eps if eps_high is None else eps_high)
            assert loss.item() == pytest.approx(aggregate_reference(per_token, mask, mode), abs=1e-9)
            assert 0 < stats["clipfrac"].item() < 1


def test_ppo_sequence_advantages_broadcast():
    draw, mask = random_batch(seed=4)
    old = draw()
    logprobs = (old + draw(0.3)).requires_grad_()
    seq_adv = draw()[:, 0]
    for mode in MODES:
        loss_seq, stats_seq = ppo_policy_loss(logprobs, old, seq_adv, mask, agg=mode)
        loss_tok, stats_tok = ppo_policy_loss(logprobs, old, expand_to_tokens(seq_adv, mask), mask, agg=mode)
        (g_seq,) = torch.autograd.grad(loss_seq, logprobs)
        (g_tok,) = torch.autograd.grad(loss_tok, logprobs)
        torch.testing.assert_close(loss_seq, loss_tok, atol=1e-12, rtol=0)
        torch.testing.assert_close(g_seq, g_tok, atol=1e-12, rtol=0)
        assert {k: v.item() for k, v in stats_seq.items()} == {k: v.item() for k, v in stats_tok.items()}


def test_ppo_padding_ignored_and_inputs_untouched():
    draw, mask = random_batch(seed=5)
    old, advantages = draw(), draw()
    logprobs = old + draw(0.3)
    copies = [x.clone() for x in (logprobs, old, advantages, mask)]
    loss, stats = ppo_policy_loss(logprobs, old, advantages, mask)
    junk = [x.clone() for x in (logprobs, old, advantages)]
    for x in junk:
        x[~mask] = float("nan")
    loss2, stats2 = ppo_policy_loss(*junk, mask)
    assert loss.item() == loss2.item()
    assert all(stats[k].item() == stats2[k].item() for k in stats)
    for x, c in zip((logprobs, old, advantages, mask), copies, strict=True):
        assert torch.equal(x, c)


# ----------------------------------------------------------------------------------------- value_loss


def value_hand_inputs():
    # columns: clipped-active, inside range, clipped-active, clip range but unclipped error larger; + padding
    values = t64([[1.0, 0.6, 0.0, 0.0, 5.0]]).requires_grad_()
    old_values = t64([[0.5, 0.5, 0.5, 0.5, 0.0]])
    returns = t64([[1.2, 1.2, -1.0, 0.2, 0.0]])
    return values, old_values, returns, prefix_mask([4], 5)


def test_value_loss_hand_clipping():
    values, old_values, returns, mask = value_hand_inputs()
    loss, stats = value_loss(values, old_values, returns, mask, clip_eps_v=0.2)
    # v=1.0 old=0.5 R=1.2:  (v-R)² = 0.04; clip -> 0.7, (0.7-1.2)² = 0.25  -> 0.125, clipped, grad 0
    # v=0.6 old=0.5 R=1.2:  inside [0.3, 0.7], both 0.36                -> 0.18,  grad v-R = -0.6
    # v=0.0 old=0.5 R=-1.0: (v-R)² = 1.0;  clip -> 0.3, 1.3² = 1.69       -> 0.845, clipped, grad 0
    # v=0.0 old=0.5 R=0.2:  (v-R)² = 0.04; clip -> 0.3, 0.1² = 0.01       -> 0.02,  unclipped, grad -0.2
    # token mean: (0.125 + 0.18 + 0.845 + 0.02) / 4 = 0.2925
    assert loss.item() == pytest.approx(0.2925, abs=1e-12)
    assert stats["clipfrac"].item() == pytest.approx(0.5, abs=1e-7)
    assert stats["value_mean"].item() == pytest.approx(0.4, abs=1e-7)
    assert all(v.dim() == 0 and not v.requires_grad for v in stats.values())
    loss.backward()
    torch.testing.assert_close(values.grad, t64([[0.0, -0.6, 0.0, -0.2, 0.0]]) / 4, atol=1e-12, rtol=0)


def test_value_loss_unclipped_and_sequence_level():
    values, old_values, returns, mask = value_hand_inputs()
    loss, stats = value_loss(values, old_values, returns, mask, clip_eps_v=None)
    # ½ (v-R)² = [0.02, 0.18, 0.5, 0.02] -> mean 0.18
    assert loss.item() == pytest.approx(0.18, abs=1e-12)
    assert stats["clipfrac"].item() == 0.0
    # sequence-level critic: (B,) tensors, mask None or (B,)
    v, old, ret = values[0, :4], old_values[0, :4], returns[0, :4]
    for m in (None, torch.ones(4, dtype=torch.bool)):
        loss_seq, stats_seq = value_loss(v, old, ret, m, clip_eps_v=0.2)
        assert loss_seq.item() == pytest.approx(0.2925, abs=1e-12)
        assert stats_seq["clipfrac"].item() == pytest.approx(0.5, abs=1e-7)
    loss_col, _ = value_loss(v[:, None], old[:, None], ret[:, None], torch.ones(4, 1, dtype=torch.bool))
    assert loss_col.item() == pytest.approx(0.2925, abs=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_value_loss_matches_loop_reference(mode):
    draw, mask = random_batch(seed=6)
    values, old_values, returns = draw(), draw(), draw()
    loss, _ = value_loss(values, old_values, returns, mask, clip_eps_v=0.3, agg=mode)
    per_token = []
    for v_row, o_row, r_row in zip(values.tolist(), old_values.tolist(), returns.tolist(), strict=True):
        per_token.append(
            [
                0.5 * max((v - r) ** 2, (min(max(v, o - 0.3), o + 0.3) - r) ** 2)
                for v, o, r in zip(v_row, o_row, r_row, strict=True)
            ]
        )
    want = aggregate_reference(torch.tensor(per_token, dtype=F64), mask, mode)
    assert loss.item() == pytest.approx(want, abs=1e-9)


# ----------------------------------------------------------------------------------------- grpo_loss


def test_grpo_kl_gradient_sign_and_value():
    # logp = old, A = 0: only the KL term has a gradient
    logprobs = t64([[-1.0, -2.0]]).requires_grad_()
    ref = t64([[-2.0, -1.0]])
    mask = prefix_mask([2], 2)
    loss, stats = grpo_loss(logprobs, logprobs.detach(), ref, torch.zeros(1, 2, dtype=F64), mask, kl_coef=0.1)
    # k3 = [e^-1, e - 2]; loss = 0.1 * mean(k3)
    assert loss.item() == pytest.approx(0.1 * (math.exp(-1) + math.e - 2) / 2, abs=1e-12)
    assert stats["kl"].item() == pytest.approx((math.exp(-1) + math.e - 2) / 2, abs=1e-7)
    loss.backward()
    # ∂k3/∂logp = 1 - exp(ref - logp): token 0 (logp > ref) → 1 - e^-1 > 0, token 1 (logp < ref) → 1 - e < 0
    grad = logprobs.grad[0]
    assert grad[0] > 0 and grad[1] < 0
    torch.testing.assert_close(grad, t64([1 - math.exp(-1), 1 - math.e]) * 0.1 / 2, atol=1e-12, rtol=0)


def test_grpo_equals_ppo_when_policy_equals_reference():
    draw, mask = random_batch(seed=7)
    old, advantages = draw(), draw()
    logprobs = old + draw(0.3)
    for mode in MODES:
        loss, stats = grpo_loss(logprobs, old, logprobs.clone(), advantages, mask, kl_coef=0.5, agg=mode)
        ppo, ppo_stats = ppo_policy_loss(logprobs, old, advantages, mask, agg=mode)
        assert loss.item() == ppo.item()
        assert stats["kl"].item() == 0.0
        assert {k: v.item() for k, v in stats.items() if k != "kl"} == {k: v.item() for k, v in ppo_stats.items()}


@pytest.mark.parametrize("mode", MODES)
def test_grpo_matches_loop_reference(mode):
    draw, mask = random_batch(seed=8)
    old, advantages, ref = draw(), draw(), draw()
    logprobs = old + draw(0.3)
    loss, _ = grpo_loss(logprobs, old, ref, advantages, mask, clip_eps=0.2, clip_eps_high=0.28, kl_coef=0.04, agg=mode)
    surrogate = surrogate_reference(logprobs, old, advantages, 0.2, 0.28)
    k3 = torch.tensor(
        [
            [math.exp(r - lp) - 1 - (r - lp) for lp, r in zip(lp_row, r_row, strict=True)]
            for lp_row, r_row in zip(logprobs.tolist(), ref.tolist(), strict=True)
        ],
        dtype=F64,
    )
    want = aggregate_reference(surrogate + 0.04 * k3, mask, mode)
    assert loss.item() == pytest.approx(want, abs=1e-9)


def test_grpo_without_reference():
    draw, mask = random_batch(seed=9)
    old, advantages = draw(), draw()
    loss, stats = grpo_loss(old + 0.1, old, None, advantages, mask, kl_coef=0.0)
    assert loss.item() == ppo_policy_loss(old + 0.1, old, advantages, mask)[0].item()
    assert stats["kl"].item() == 0.0
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo_loss(old, old, None, advantages, mask, kl_coef=0.1)


# ----------------------------------------------------------------------------------------- explained_variance


def test_explained_variance():
    returns = t64([[1.0, 2.0, 3.0, 50.0]])
    mask = prefix_mask([3], 4)
    assert explained_variance(returns.clone(), returns, mask).item() == pytest.approx(1.0, abs=1e-12)
    assert explained_variance(torch.full_like(returns, 2.0), returns, mask).item() == pytest.approx(0.0, abs=1e-12)
    # V = [1, 2, 2]: residual [0, 0, 1] has var 2/9; Var[R] = 2/3 -> 1 - (2/9) / (2/3) = 2/3
    values = t64([[1.0, 2.0, 2.0, -7.0]])
    assert explained_variance(values, returns, mask).item() == pytest.approx(2 / 3, abs=1e-12)
    # worse than the mean is negative: V = [3, 2, 1] -> residual [-2, 0, 2], var 8/3 -> 1 - 4 = -3
    assert explained_variance(t64([[3.0, 2.0, 1.0, 0.0]]), returns, mask).item() == pytest.approx(-3.0, abs=1e-12)
    # constant returns: undefined ratio -> 0, not NaN
    flat = t64([[4.0, 4.0, 4.0, 9.0]])
    assert explained_variance(t64([[1.0, 5.0, 2.0, 0.0]]), flat, mask).item() == 0.0
    assert not explained_variance(values.requires_grad_(), returns, mask).requires_grad
