"""Tests for rlhflab.algorithms.advantages: hand-computed cases plus plain-Python loop references."""

import pytest
import torch

from rlhflab.algorithms.advantages import (
    expand_to_tokens,
    gae,
    group_norm,
    rloo,
    sequence_advantages,
    token_rewards,
)

F64 = torch.float64


def t64(rows):
    return torch.tensor(rows, dtype=F64)


def prefix_mask(lengths, t):
    return torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]


def random_batch(b=6, t=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    lengths[0] = t  # always include a full-length row
    mask = torch.arange(t)[None, :] < lengths[:, None]
    draw = lambda: torch.randn(b, t, generator=g, dtype=F64)  # noqa: E731
    return draw, mask


# ----------------------------------------------------------------------------------------- token_rewards


def test_token_rewards_hand():
    logprobs = t64([[-1.0, -2.0, -0.5, 9.0], [-1.0, -1.0, 7.0, 7.0], [-1.0, -1.0, -1.0, -3.0]])
    ref = t64([[-1.5, -1.0, -0.5, 0.0], [-2.0, -0.5, 0.0, 0.0], [-1.0, -1.0, -1.0, -1.0]])
    mask = prefix_mask([3, 2, 4], 4)
    scores = t64([2.0, -1.0, 0.5])
    rewards, kl = token_rewards(logprobs, ref, scores, mask, kl_coef=0.1)
    # kl = logp - ref on valid tokens: row0 [0.5, -1, 0 | 0], row1 [1, -0.5 | 0, 0], row2 [0, 0, 0, -2]
    torch.testing.assert_close(kl, t64([[0.5, -1.0, 0.0, 0.0], [1.0, -0.5, 0.0, 0.0], [0.0, 0.0, 0.0, -2.0]]))
    # r = -0.1 kl, score at the last valid token (index len-1): row0 t=2, row1 t=1, row2 t=3
    expected = t64([[-0.05, 0.1, 2.0, 0.0], [-0.1, 0.05 - 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.2 + 0.5]])
    torch.testing.assert_close(rewards, expected, atol=1e-12, rtol=0)
    # Σ r = score - β Σ kl: 2 - 0.1 * (-0.5) = 2.05; -1 - 0.1 * 0.5 = -1.05; 0.5 - 0.1 * (-2) = 0.7
    torch.testing.assert_close(rewards.sum(1), t64([2.05, -1.05, 0.7]), atol=1e-12, rtol=0)


def test_token_rewards_matches_loop_reference_and_sum_property():
    for seed in range(4):
        draw, mask = random_batch(seed=seed)
        logprobs, ref, scores = draw(), draw(), draw()[:, 0]
        rewards, kl = token_rewards(logprobs, ref, scores, mask, kl_coef=0.3)
        for b in range(mask.shape[0]):
            n = int(mask[b].sum())
            for t in range(mask.shape[1]):
                k = logprobs[b, t].item() - ref[b, t].item() if t < n else 0.0
                r = -0.3 * k + (scores[b].item() if t == n - 1 else 0.0)
                assert kl[b, t].item() == pytest.approx(k, abs=1e-9)
                assert rewards[b, t].item() == pytest.approx(r, abs=1e-9)
        torch.testing.assert_close(rewards.sum(1), scores - 0.3 * kl.sum(1), atol=1e-9, rtol=0)


def test_token_rewards_ignore_padding_and_keep_inputs():
    draw, mask = random_batch(seed=5)
    logprobs, ref, scores = draw(), draw(), draw()[:, 0]
    copies = [x.clone() for x in (logprobs, ref, scores, mask)]
    rewards, kl = token_rewards(logprobs, ref, scores, mask, kl_coef=0.2)
    junk_lp, junk_ref = logprobs.clone(), ref.clone()
    junk_lp[~mask], junk_ref[~mask] = float("nan"), 1e6
    rewards2, kl2 = token_rewards(junk_lp, junk_ref, scores, mask, kl_coef=0.2)
    assert torch.equal(rewards, rewards2) and torch.equal(kl, kl2)
    assert (rewards[~mask] == 0).all() and (kl[~mask] == 0).all()
    for x, c in zip((logprobs, ref, scores, mask), copies, strict=True):
        assert torch.equal(x, c)


def test_token_rewards_rejects_empty_row():
    mask = prefix_mask([2, 0], 3)
    with pytest.raises(ValueError, match="at least one valid token"):
        token_rewards(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2), mask, kl_coef=0.1)


# ----------------------------------------------------------------------------------------- gae


def gae_reference(rewards, values, mask, gamma, lam):
    """Plain per-row loop over the valid prefix of each row."""
    b_size, t_size = rewards.shape
    adv = [[0.0] * t_size for _ in range(b_size)]
    for b in range(b_size):
        n = int(mask[b].sum())
        running = 0.0
        for t in reversed(range(n)):
            next_v = values[b, t + 1].item() if t + 1 < n else 0.0
            delta = rewards[b, t].item() + gamma * next_v - values[b, t].item()
            running = delta + gamma * lam * running
            adv[b][t] = running
    adv = torch.tensor(adv, dtype=F64)
    return adv, torch.where(mask, adv + values, 0.0)


def test_gae_hand_three_tokens():
    rewards, values = t64([[0.0, 0.0, 1.0]]), t64([[0.5, 0.2, 0.1]])
    mask = prefix_mask([3], 3)
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    # t=2: δ = 1 - 0.1 = 0.9;          A2 = 0.9
    # t=1: δ = 0 + 0.1 - 0.2 = -0.1;   A1 = -0.1 + 0.95 * 0.9 = 0.755
    # t=0: δ = 0 + 0.2 - 0.5 = -0.3;   A0 = -0.3 + 0.95 * 0.755 = 0.41725
    torch.testing.assert_close(adv, t64([[0.41725, 0.755, 0.9]]), atol=1e-12, rtol=0)
    torch.testing.assert_close(ret, t64([[0.91725, 0.955, 1.0]]), atol=1e-12, rtol=0)


def test_gae_hand_padded_row_with_discount():
    # row 1 has 2 valid tokens; the padded reward/value (5, 9) must be ignored
    rewards = t64([[0.0, 0.0, 1.0], [0.0, 1.0, 5.0]])
    values = t64([[0.5, 0.2, 0.1], [0.5, 0.2, 9.0]])
    mask = prefix_mask([3, 2], 3)
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    # row 0: δ2 = 0.9, A2 = 0.9; δ1 = 0.9*0.1 - 0.2 = -0.11, A1 = -0.11 + 0.45*0.9 = 0.295
    #        δ0 = 0.9*0.2 - 0.5 = -0.32, A0 = -0.32 + 0.45*0.295 = -0.18725
    # row 1: δ1 = 1 - 0.2 = 0.8 (no bootstrap from padding), A1 = 0.8
    #        δ0 = 0.9*0.2 - 0.5 = -0.32, A0 = -0.32 + 0.45*0.8 = 0.04
    torch.testing.assert_close(adv, t64([[-0.18725, 0.295, 0.9], [0.04, 0.8, 0.0]]), atol=1e-12, rtol=0)
    torch.testing.assert_close(ret, t64([[0.31275, 0.495, 1.0], [0.54, 1.0, 0.0]]), atol=1e-12, rtol=0)


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.99, 0.9), (0.5, 1.0), (1.0, 0.0), (0.8, 0.3)])
def test_gae_matches_loop_reference(gamma, lam):
    for seed in range(3):
        draw, mask = random_batch(seed=seed)
        rewards, values = draw(), draw()
        adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
        ref_adv, ref_ret = gae_reference(rewards, values, mask, gamma, lam)
        torch.testing.assert_close(adv, ref_adv, atol=1e-9, rtol=0)
        torch.testing.assert_close(ret, ref_ret, atol=1e-9, rtol=0)


def test_gae_limits():
    draw, mask = random_batch(seed=7)
    rewards, values = torch.where(mask, draw(), 0.0), draw()
    # λ=1, γ=1: A_t = Σ_{s≥t} r_s - V_t (Monte Carlo); returns = reward-to-go
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    to_go = rewards.flip(1).cumsum(1).flip(1)
    torch.testing.assert_close(ret, torch.where(mask, to_go, 0.0), atol=1e-9, rtol=0)
    # λ=0: A_t = δ_t (one-step TD)
    adv, _ = gae(rewards, values, mask, gamma=0.9, lam=0.0)
    next_valid = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], dim=1)
    next_v = torch.where(next_valid, torch.cat([values[:, 1:], values[:, :1]], dim=1), 0.0)
    torch.testing.assert_close(adv, torch.where(mask, rewards + 0.9 * next_v - values, 0.0), atol=1e-9, rtol=0)


def test_gae_padding_has_no_influence_and_inputs_untouched():
    draw, mask = random_batch(seed=11)
    rewards, values = draw(), draw()
    copies = (rewards.clone(), values.clone(), mask.clone())
    adv, ret = gae(rewards, values, mask)
    junk_r, junk_v = rewards.clone(), values.clone()
    junk_r[~mask], junk_v[~mask] = float("nan"), float("inf")
    adv2, ret2 = gae(junk_r, junk_v, mask)
    assert torch.equal(adv, adv2) and torch.equal(ret, ret2)
    assert (adv[~mask] == 0).all() and (ret[~mask] == 0).all()
    for x, c in zip((rewards, values, mask), copies, strict=True):
        assert torch.equal(x, c)


# ----------------------------------------------------------------------------------------- rloo / group_norm


def test_rloo_hand_k2_k4():
    # k=2: A_i = R_i - R_other
    torch.testing.assert_close(rloo(t64([1.0, 3.0, 0.0, 4.0]), k=2), t64([-2.0, 2.0, -4.0, 4.0]))
    # k=4, sum 12: 1 - 11/3, 2 - 10/3, 3 - 9/3, 6 - 6/3
    torch.testing.assert_close(rloo(t64([1.0, 2.0, 3.0, 6.0]), k=4), t64([-8 / 3, -4 / 3, 0.0, 4.0]))
    # two groups of 4: each group uses only its own members
    out = rloo(t64([1.0, 2.0, 3.0, 6.0, 10.0, 10.0, 10.0, 14.0]), k=4)
    torch.testing.assert_close(out, t64([-8 / 3, -4 / 3, 0.0, 4.0, -4 / 3, -4 / 3, -4 / 3, 4.0]))


def test_rloo_other_baselines():
    scores = t64([1.0, 3.0, 0.0, 4.0])
    torch.testing.assert_close(rloo(scores, k=2, baseline="batch_mean"), t64([-1.0, 1.0, -2.0, 2.0]))
    none = rloo(scores, k=2, baseline="none")
    torch.testing.assert_close(none, scores)
    none += 1  # must not alias the input
    torch.testing.assert_close(scores, t64([1.0, 3.0, 0.0, 4.0]))
    # batch_mean and none work with k=1
    torch.testing.assert_close(rloo(scores, k=1, baseline="batch_mean"), t64([-1.0, 1.0, -2.0, 2.0]))
    # a given batch mean (the global one under data parallelism) replaces this batch's own
    torch.testing.assert_close(rloo(scores, k=2, baseline="batch_mean", batch_mean=t64(3.0)), t64([-2.0, 0, -3, 1]))


def test_rloo_matches_loop_reference():
    torch.manual_seed(0)
    scores = torch.randn(12, dtype=F64)
    for k in (2, 3, 4, 6):
        out = rloo(scores, k=k)
        vals = scores.tolist()
        for i, v in enumerate(vals):
            group = vals[(i // k) * k : (i // k) * k + k]
            assert out[i].item() == pytest.approx(v - (sum(group) - v) / (k - 1), abs=1e-12)


def test_rloo_errors():
    with pytest.raises(ValueError, match=r"B=5.*k=2"):
        rloo(torch.zeros(5), k=2)
    with pytest.raises(ValueError, match="k >= 2"):
        rloo(torch.zeros(4), k=1)
    with pytest.raises(ValueError, match="leave_one_out"):
        rloo(torch.zeros(4), k=2, baseline="mean")


def test_group_norm_hand():
    scores = t64([1.0, 2.0, 3.0, 6.0, 1.0, 3.0, 5.0, 5.0])
    # k=4 group 0: mean 3, dev [-2, -1, 0, 3], unbiased var (4 + 1 + 0 + 9) / 3 = 14/3
    # group 1: mean 3.5, dev [-2.5, -0.5, 1.5, 1.5], unbiased var (6.25 + 0.25 + 2.25 + 2.25) / 3 = 11/3
    s0, s1 = (14 / 3) ** 0.5 + 1e-4, (11 / 3) ** 0.5 + 1e-4
    expected = t64([-2 / s0, -1 / s0, 0.0, 3 / s0, -2.5 / s1, -0.5 / s1, 1.5 / s1, 1.5 / s1])
    torch.testing.assert_close(group_norm(scores, k=4), expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(group_norm(scores, k=4, scale=False), t64([-2, -1, 0, 3, -2.5, -0.5, 1.5, 1.5]))
    # k=2, [1, 3]: dev ±1, unbiased std sqrt(2)
    torch.testing.assert_close(
        group_norm(t64([1.0, 3.0]), k=2, eps=0.0), t64([-(2**-0.5), 2**-0.5]), atol=1e-12, rtol=0
    )
    # a constant group gives 0, not NaN
    torch.testing.assert_close(group_norm(t64([2.0, 2.0, 2.0]), k=3), t64([0.0, 0.0, 0.0]))


def test_group_norm_matches_loop_reference_and_errors():
    torch.manual_seed(1)
    scores = torch.randn(12, dtype=F64)
    copy = scores.clone()
    for k in (2, 3, 4):
        out = group_norm(scores, k=k)
        vals = scores.tolist()
        for i, v in enumerate(vals):
            group = vals[(i // k) * k : (i // k) * k + k]
            mean = sum(group) / k
            std = (sum((g - mean) ** 2 for g in group) / (k - 1)) ** 0.5
            assert out[i].item() == pytest.approx((v - mean) / (std + 1e-4), abs=1e-9)
    assert torch.equal(scores, copy)
    with pytest.raises(ValueError, match=r"B=7.*k=2"):
        group_norm(torch.zeros(7), k=2)
    with pytest.raises(ValueError, match="k >= 2"):
        group_norm(torch.zeros(4), k=1)
    torch.testing.assert_close(group_norm(t64([1.0, 2.0]), k=1, scale=False), t64([0.0, 0.0]))


# ----------------------------------------------------------------------------------------- sequence helpers


def test_sequence_advantages_and_expand():
    torch.testing.assert_close(sequence_advantages(t64([1.0, 0.0]), t64([0.25, -0.5])), t64([0.75, 0.5]))
    with pytest.raises(ValueError, match="shape mismatch"):
        sequence_advantages(torch.zeros(3), torch.zeros(3, 1))
    mask = prefix_mask([2, 3, 1], 3)
    out = expand_to_tokens(t64([1.5, -2.0, 4.0]), mask)
    torch.testing.assert_close(out, t64([[1.5, 1.5, 0.0], [-2.0, -2.0, -2.0], [4.0, 0.0, 0.0]]))
