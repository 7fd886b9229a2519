"""Tests for rlhflab.ops: hand-computed cases plus plain-Python reference implementations."""

import math

import pytest
import torch

from rlhflab import ops
from rlhflab.ops import (
    entropy_from_logits,
    kl_penalty,
    logprobs_from_hidden,
    logprobs_from_logits,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
)

F64 = torch.float64

# 2×3 case used throughout: valid entries are 1, 2 (row 0) and 4 (row 1).
X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=F64)
M = torch.tensor([[True, True, False], [True, False, False]])
# mean = 7/3; deviations -4/3, -1/3, 5/3; squares 16/9 + 1/9 + 25/9 = 42/9
# biased var = 42/9 / 3 = 14/9; unbiased = 42/9 / 2 = 7/3
MEAN, VAR, VAR_UNBIASED = 7 / 3, 14 / 9, 7 / 3


def random_masked(b=5, t=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, generator=g, dtype=F64)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    mask = torch.arange(t)[None, :] < lengths[:, None]
    return x, mask


def ref_valid(x, mask):
    return [float(v) for v, m in zip(x.flatten().tolist(), mask.flatten().tolist(), strict=True) if m]


# ----------------------------------------------------------------------------------------- masked stats


def test_masked_sum_mean_hand():
    assert masked_sum(X, M).item() == pytest.approx(7.0, abs=1e-12)
    torch.testing.assert_close(masked_sum(X, M, dim=1), torch.tensor([3.0, 4.0], dtype=F64))
    assert masked_mean(X, M).item() == pytest.approx(MEAN, abs=1e-12)
    torch.testing.assert_close(masked_mean(X, M, dim=1), torch.tensor([1.5, 4.0], dtype=F64))


def test_masked_var_hand_biased_and_unbiased():
    assert masked_var(X, M).item() == pytest.approx(VAR, abs=1e-12)
    assert masked_var(X, M, unbiased=True).item() == pytest.approx(VAR_UNBIASED, abs=1e-12)


def test_masked_var_unbiased_needs_two_entries():
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(X, torch.tensor([[True, False, False], [False, False, False]]), unbiased=True)


def test_masked_whiten_hand():
    s = math.sqrt(14)  # (x - 7/3) / sqrt(14/9) = 3 (x - 7/3) / sqrt(14)
    expected = torch.tensor([[-4 / s, -1 / s, 0.0], [5 / s, 0.0, 0.0]], dtype=F64)
    torch.testing.assert_close(masked_whiten(X, M, eps=0.0), expected, atol=1e-12, rtol=0)
    expected_unshifted = torch.tensor([[-4 / s + MEAN, -1 / s + MEAN, 0.0], [5 / s + MEAN, 0.0, 0.0]], dtype=F64)
    torch.testing.assert_close(masked_whiten(X, M, shift_mean=False, eps=0.0), expected_unshifted, atol=1e-12, rtol=0)
    # eps enters under the square root
    expected_eps = (X - MEAN) / math.sqrt(VAR + 0.5) * M
    torch.testing.assert_close(masked_whiten(X, M, eps=0.5), expected_eps, atol=1e-12, rtol=0)


def test_masked_stats_match_python_reference():
    for seed in range(5):
        x, mask = random_masked(seed=seed)
        vals = ref_valid(x, mask)
        n = len(vals)
        mean = sum(vals) / n
        var = sum((v - mean) ** 2 for v in vals) / n
        assert masked_sum(x, mask).item() == pytest.approx(sum(vals), abs=1e-9)
        assert masked_mean(x, mask).item() == pytest.approx(mean, abs=1e-9)
        assert masked_var(x, mask).item() == pytest.approx(var, abs=1e-9)
        assert masked_var(x, mask, unbiased=True).item() == pytest.approx(var * n / (n - 1), abs=1e-9)
        row_means = [sum(ref_valid(x[b : b + 1], mask[b : b + 1])) / int(mask[b].sum()) for b in range(len(x))]
        torch.testing.assert_close(masked_mean(x, mask, dim=1), torch.tensor(row_means, dtype=F64))
        white = masked_whiten(x, mask, eps=0.0)
        for b in range(x.shape[0]):
            for t in range(x.shape[1]):
                want = (x[b, t].item() - mean) / math.sqrt(var) if mask[b, t] else 0.0
                assert white[b, t].item() == pytest.approx(want, abs=1e-9)


def test_whiten_gives_zero_mean_unit_var_on_valid_entries():
    x, mask = random_masked(b=8, t=9, seed=3)
    x = 5.0 + 3.0 * x
    white = masked_whiten(x, mask)
    assert masked_mean(white, mask).item() == pytest.approx(0.0, abs=1e-9)
    assert masked_var(white, mask).item() == pytest.approx(1.0, abs=1e-6)
    assert (white[~mask] == 0).all()
    # shift_mean=False only rescales: mean is preserved, spread is unit
    unshifted = masked_whiten(x, mask, shift_mean=False)
    assert masked_mean(unshifted, mask).item() == pytest.approx(masked_mean(x, mask).item(), abs=1e-9)
    assert masked_var(unshifted, mask).item() == pytest.approx(1.0, abs=1e-6)


def test_masked_positions_are_ignored_and_inputs_untouched():
    x, mask = random_masked(seed=1)
    garbage = x.clone()
    garbage[~mask] = torch.tensor([float("nan"), float("inf"), 1e30, -1e30]).repeat(100)[: int((~mask).sum())].to(F64)
    x_copy, mask_copy = x.clone(), mask.clone()
    for fn in (masked_sum, masked_mean, masked_var, masked_whiten):
        torch.testing.assert_close(fn(garbage, mask), fn(x, mask), atol=0, rtol=0)
    torch.testing.assert_close(masked_mean(garbage, mask, dim=1), masked_mean(x, mask, dim=1), atol=0, rtol=0)
    assert torch.equal(x, x_copy) and torch.equal(mask, mask_copy)


# --------------------------------------------------------------------------------- log-probs / entropy


def test_logprobs_hand_and_temperature():
    # row [0, 0, ln2] -> softmax [1/4, 1/4, 1/2]; token 2 -> log(1/2)
    logits = torch.tensor([[[0.0, 0.0, math.log(2)], [0.0, 0.0, math.log(2)]]], dtype=F64)
    tokens = torch.tensor([[2, 0]])
    torch.testing.assert_close(
        logprobs_from_logits(logits, tokens), torch.tensor([[-math.log(2), -math.log(4)]], dtype=F64)
    )
    # temperature 2: [0, 0, ln2/2] -> exp = [1, 1, sqrt2]; p(2) = sqrt2 / (2 + sqrt2), p(0) = 1 / (2 + sqrt2)
    r2 = math.sqrt(2)
    expected = torch.tensor([[math.log(r2 / (2 + r2)), math.log(1 / (2 + r2))]], dtype=F64)
    torch.testing.assert_close(logprobs_from_logits(logits, tokens, temperature=2.0), expected)


def test_logprobs_match_log_softmax_gather():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11, dtype=F64) * 3
    tokens = torch.randint(0, 11, (3, 5))
    copy = logits.clone()
    for temp in (1.0, 0.7, 1.5):
        ref = torch.log_softmax(logits / temp, -1).gather(-1, tokens[..., None]).squeeze(-1)
        out = logprobs_from_logits(logits, tokens, temperature=temp)
        assert out.shape == (3, 5) and out.dtype == F64
        torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    assert torch.equal(logits, copy)
    # fp32 in -> fp32 out
    assert logprobs_from_logits(logits.float(), tokens).dtype == torch.float32


def test_logprobs_low_precision_matches_fp32_reference():
    torch.manual_seed(1)
    logits32 = torch.randn(2, 6, 50) * 4
    tokens = torch.randint(0, 50, (2, 6))
    for dtype in (torch.bfloat16, torch.float16):
        low = logits32.to(dtype)
        out = logprobs_from_logits(low, tokens, temperature=0.8)
        assert out.dtype == torch.float32
        # same (rounded) inputs computed in fp32: agreement up to fp32 rounding
        ref = torch.log_softmax(low.float() / 0.8, -1).gather(-1, tokens[..., None]).squeeze(-1)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
        # and close to the unrounded fp32 logits (bf16 input rounding only)
        ref32 = torch.log_softmax(logits32 / 0.8, -1).gather(-1, tokens[..., None]).squeeze(-1)
        torch.testing.assert_close(out, ref32, atol=0.1, rtol=0)


def test_logprobs_gradient_hand_computed():
    # softmax([0, 0, ln2]) = [1/4, 1/4, 1/2]; d log p(2) / d z = onehot(2) − p = [−1/4, −1/4, 1/2], times g = 3
    logits = torch.tensor([[[0.0, 0.0, math.log(2)]]], dtype=F64, requires_grad=True)
    (3.0 * logprobs_from_logits(logits, torch.tensor([[2]]))).sum().backward()
    torch.testing.assert_close(logits.grad, torch.tensor([[[-0.75, -0.75, 1.5]]], dtype=F64), atol=1e-15, rtol=0)
    # temperature 2 divides the gradient by 2: softmax([0, 0, ln2 / 2]) = [1, 1, √2] / (2 + √2), token 0
    logits.grad = None
    logprobs_from_logits(logits, torch.tensor([[0]]), temperature=2.0).sum().backward()
    r2 = math.sqrt(2)
    expected = torch.tensor([[[1 - 1 / (2 + r2), -1 / (2 + r2), -r2 / (2 + r2)]]], dtype=F64) / 2
    torch.testing.assert_close(logits.grad, expected, atol=1e-15, rtol=0)


def test_logprobs_gradient_matches_plain_loop_and_autograd():
    torch.manual_seed(3)
    big = torch.randn(3, 6, 9, dtype=F64) * 3
    tokens = torch.randint(0, 9, (3, 5))
    weights = torch.randn(3, 5, dtype=F64)  # a non-uniform upstream gradient
    for temp in (1.0, 0.7):
        # a non-contiguous slice: logits may come as a view
        leaf = big.clone().requires_grad_()
        (logprobs_from_logits(leaf[:, :-1], tokens, temperature=temp) * weights).sum().backward()
        ref_leaf = big.clone().requires_grad_()
        ref = torch.log_softmax(ref_leaf[:, :-1] / temp, -1).gather(-1, tokens[..., None]).squeeze(-1)
        (ref * weights).sum().backward()
        torch.testing.assert_close(leaf.grad, ref_leaf.grad, atol=1e-13, rtol=0)
        loop = torch.zeros_like(big)  # (onehot(y) − softmax(z / τ)) · g / τ, one position at a time
        for b in range(3):
            for t in range(5):
                z = big[b, t] / temp
                p = [math.exp(v - math.log(sum(math.exp(u) for u in z.tolist()))) for v in z.tolist()]
                for v in range(9):
                    loop[b, t, v] = ((v == tokens[b, t].item()) - p[v]) * weights[b, t].item() / temp
        torch.testing.assert_close(leaf.grad, loop, atol=1e-12, rtol=0)
        torch.autograd.gradcheck(
            lambda x, temp=temp: logprobs_from_logits(x, tokens, temperature=temp),
            (big[:, :-1].clone().requires_grad_(),),
        )
    # fp32 logits get an fp32 gradient, equal to autograd's up to rounding
    x32, ref32 = big.float().requires_grad_(), big.float().requires_grad_()
    tokens6 = torch.randint(0, 9, (3, 6))
    logprobs_from_logits(x32, tokens6).sum().backward()
    torch.log_softmax(ref32, -1).gather(-1, tokens6[..., None]).sum().backward()
    assert x32.grad.dtype == torch.float32
    torch.testing.assert_close(x32.grad, ref32.grad, atol=1e-6, rtol=0)


def test_logprobs_gradient_low_precision():
    torch.manual_seed(2)
    logits32 = torch.randn(2, 4, 13)
    tokens = torch.randint(0, 13, (2, 4))
    low = logits32.to(torch.bfloat16).requires_grad_()
    logprobs_from_logits(low, tokens).sum().backward()
    ref = low.detach().float().requires_grad_()
    torch.log_softmax(ref, -1).gather(-1, tokens[..., None]).sum().backward()
    assert low.grad.dtype == torch.bfloat16
    torch.testing.assert_close(low.grad.float(), ref.grad, atol=1e-2, rtol=0)


def test_entropy_hand():
    uniform = torch.zeros(1, 1, 4, dtype=F64)
    # uniform over 4 -> ln4, whatever the temperature
    assert entropy_from_logits(uniform).item() == pytest.approx(math.log(4), abs=1e-12)
    assert entropy_from_logits(uniform, temperature=3.0).item() == pytest.approx(math.log(4), abs=1e-12)
    # [0, 0, ln2] -> p = [1/4, 1/4, 1/2] -> H = 2 * 1/4 * ln4 + 1/2 * ln2 = 1.5 ln2
    logits = torch.tensor([[[0.0, 0.0, math.log(2)]]], dtype=F64)
    assert entropy_from_logits(logits).item() == pytest.approx(1.5 * math.log(2), abs=1e-12)


def test_entropy_matches_python_reference():
    torch.manual_seed(3)
    logits = torch.randn(2, 3, 7, dtype=F64) * 2
    for temp in (1.0, 0.5):
        out = entropy_from_logits(logits, temperature=temp)
        for b in range(2):
            for t in range(3):
                z = [v / temp for v in logits[b, t].tolist()]
                norm = sum(math.exp(v) for v in z)
                probs = [math.exp(v) / norm for v in z]
                assert out[b, t].item() == pytest.approx(-sum(p * math.log(p) for p in probs), abs=1e-9)
    low = entropy_from_logits(logits.to(torch.bfloat16))
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, entropy_from_logits(logits.to(torch.bfloat16).float()), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------ log-probs from hidden states


@pytest.mark.parametrize("block", [4096, 2, 1])
def test_logprobs_from_hidden_hand(monkeypatch, block):
    """H = 1, W = [0, 0, 1]ᵀ, h = ln2: logits [0, 0, ln2] → p = [1/4, 1/4, 1/2]; log p(2) = −ln2, H = 1.5 ln2,
    ∂ log p(2) / ∂h = W_2 − Σ_v p_v W_v = 1 − 1/2 = 1/2 (× g = 3 → 1.5). Blocks of 1 and 2 vocabulary rows make the
    running max move (block 1 holds the max), so the online rescaling is what gives these numbers."""
    monkeypatch.setattr(ops, "VOCAB_BLOCK", block)
    weight = torch.tensor([[0.0], [0.0], [1.0]], dtype=F64)
    hidden = torch.full((1, 1, 1), math.log(2), dtype=F64, requires_grad=True)
    logprobs, entropy = logprobs_from_hidden(hidden, weight, None, torch.tensor([[2]]), with_entropy=True)
    assert logprobs.item() == pytest.approx(-math.log(2), abs=1e-15)
    assert entropy.item() == pytest.approx(1.5 * math.log(2), abs=1e-15) and not entropy.requires_grad
    (3.0 * logprobs).sum().backward()
    assert hidden.grad.item() == pytest.approx(1.5, abs=1e-15)
    # temperature 2 and a bias that undoes the ln2: logits [0, 0, 0] → uniform; ∂/∂h = (1 − 1/3) / 2
    hidden.grad = None
    bias = torch.tensor([0.0, 0.0, -math.log(2)], dtype=F64)
    logprobs, _ = logprobs_from_hidden(hidden, weight, bias, torch.tensor([[2]]), temperature=2.0)
    logprobs.sum().backward()
    assert logprobs.item() == pytest.approx(-math.log(3), abs=1e-15)
    assert hidden.grad.item() == pytest.approx(1 / 3, abs=1e-15)


@pytest.mark.parametrize("block", [4096, 5, 1])
def test_logprobs_from_hidden_equal_the_logits_path(monkeypatch, block):
    """Against logprobs_from_logits / entropy_from_logits of the materialised logits (themselves tested against a
    plain loop above), values and the gradient of a weighted sum, fp64, a non-contiguous hidden slice."""
    monkeypatch.setattr(ops, "VOCAB_BLOCK", block)
    g = torch.Generator().manual_seed(4)
    states = torch.randn(3, 6, 8, generator=g, dtype=F64)
    weight, bias = torch.randn(37, 8, generator=g, dtype=F64), torch.randn(37, generator=g, dtype=F64)
    tokens = torch.randint(0, 37, (3, 5), generator=g)
    upstream = torch.randn(3, 5, generator=g, dtype=F64)
    for temp in (1.0, 0.7):
        for head_bias in (bias, None):
            leaf, ref_leaf = states.clone().requires_grad_(), states.clone().requires_grad_()
            logprobs, entropy = logprobs_from_hidden(leaf[:, 1:], weight, head_bias, tokens, temp, with_entropy=True)
            logits = torch.nn.functional.linear(ref_leaf[:, 1:], weight, head_bias)  # (3, 5, 37)
            expected = logprobs_from_logits(logits, tokens, temp)
            torch.testing.assert_close(logprobs, expected, atol=1e-12, rtol=0)
            torch.testing.assert_close(entropy, entropy_from_logits(logits.detach(), temp), atol=1e-12, rtol=0)
            (logprobs * upstream).sum().backward()
            (expected * upstream).sum().backward()
            torch.testing.assert_close(leaf.grad, ref_leaf.grad, atol=1e-12, rtol=0)
        torch.autograd.gradcheck(
            lambda h, temp=temp: logprobs_from_hidden(h, weight, bias, tokens, temp)[0],
            (states[:, 1:].clone().requires_grad_(),),
        )
    # huge logits: the running max keeps every exp finite
    big, _ = logprobs_from_hidden(1e3 * states[:, 1:], weight, None, tokens)
    torch.testing.assert_close(big, logprobs_from_logits(1e3 * states[:, 1:] @ weight.T, tokens), atol=1e-9, rtol=0)


def test_logprobs_from_hidden_precision_and_frozen_head():
    g = torch.Generator().manual_seed(5)
    states, weight = torch.randn(2, 4, 16, generator=g), torch.randn(50, 16, generator=g) / 4
    tokens = torch.randint(0, 50, (2, 4), generator=g)
    low, low_weight = states.bfloat16().requires_grad_(), weight.bfloat16()
    logprobs, _ = logprobs_from_hidden(low, low_weight, None, tokens)
    assert logprobs.dtype == torch.float32
    ref = low.detach().float().requires_grad_()
    expected = logprobs_from_logits(ref @ low_weight.float().T, tokens)
    torch.testing.assert_close(logprobs, expected, atol=2e-2, rtol=0)  # bf16 products, fp32 reductions
    logprobs.sum().backward()
    expected.sum().backward()
    assert low.grad.dtype == torch.bfloat16
    torch.testing.assert_close(low.grad.float(), ref.grad, atol=2e-2, rtol=0)
    assert logprobs_from_hidden(states.double(), weight.double(), None, tokens)[0].dtype == F64
    with pytest.raises(ValueError, match="LM head must be frozen"):
        logprobs_from_hidden(states, weight.clone().requires_grad_(), None, tokens)


# ----------------------------------------------------------------------------------------- KL estimators


def test_kl_penalty_hand_values():
    logp, ref = torch.tensor([-1.0, -2.0], dtype=F64), torch.tensor([-2.0, -1.0], dtype=F64)
    # d = logp - ref = [1, -1]
    torch.testing.assert_close(kl_penalty(logp, ref, "k1"), torch.tensor([1.0, -1.0], dtype=F64))
    torch.testing.assert_close(kl_penalty(logp, ref, "k2"), torch.tensor([0.5, 0.5], dtype=F64))
    # k3 = exp(ref - logp) - 1 - (ref - logp): d=1 -> e^-1 - 1 + 1 = e^-1; d=-1 -> e - 1 - 1 = e - 2
    torch.testing.assert_close(
        kl_penalty(logp, ref, "k3"), torch.tensor([math.exp(-1), math.e - 2], dtype=F64), atol=1e-12, rtol=0
    )


def test_kl_penalty_properties():
    torch.manual_seed(4)
    logp, ref = torch.randn(4, 9, dtype=F64) * 2, torch.randn(4, 9, dtype=F64) * 2
    copy = (logp.clone(), ref.clone())
    assert (kl_penalty(logp, ref, "k3") >= 0).all()
    assert (kl_penalty(logp, ref, "k2") >= 0).all()
    torch.testing.assert_close(kl_penalty(logp, ref, "k2"), kl_penalty(ref, logp, "k2"), atol=0, rtol=0)
    for kind in ("k1", "k2", "k3"):
        assert (kl_penalty(logp, logp, kind) == 0).all()
        out = kl_penalty(logp, ref, kind)
        for (a, r), v in zip(
            zip(logp.flatten().tolist(), ref.flatten().tolist(), strict=True),
            out.flatten().tolist(),
            strict=True,
        ):
            want = {"k1": a - r, "k2": 0.5 * (a - r) ** 2, "k3": math.exp(r - a) - 1 - (r - a)}[kind]
            assert v == pytest.approx(want, abs=1e-9)
    assert torch.equal(logp, copy[0]) and torch.equal(ref, copy[1])


def test_kl_penalty_bad_kind():
    with pytest.raises(ValueError, match="k1.*k2.*k3"):
        kl_penalty(torch.zeros(1), torch.zeros(1), "kl")
