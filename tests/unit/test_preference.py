"""Bradley–Terry, DPO (sigmoid, IPO) and the implicit rewards against hand-computed values and plain loops."""

import math

import pytest
import torch

from rlhflab.algorithms.preference import bradley_terry_loss, dpo_loss, implicit_rewards


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_bradley_terry_by_hand():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])  # differences 2, -1
    loss, stats = bradley_terry_loss(chosen, rejected)
    assert loss.item() == pytest.approx((softplus(-2) + softplus(1)) / 2, abs=1e-7)
    assert stats["accuracy"].item() == 0.5 and stats["margin"].item() == pytest.approx(0.5)
    assert stats["chosen"].item() == pytest.approx(1.0) and stats["rejected"].item() == pytest.approx(0.5)
    # margin 1: -log σ(2 - 1), -log σ(-1 - 1)
    loss, _ = bradley_terry_loss(chosen, rejected, margin=1.0)
    assert loss.item() == pytest.approx((softplus(-1) + softplus(2)) / 2, abs=1e-7)
    # per-pair margins and TRL's centring term 0.01 · mean((r_c + r_r)²) = 0.01 · (4 + 1) / 2
    loss, _ = bradley_terry_loss(chosen, rejected, margin=torch.tensor([0.0, 1.0]), center_rewards_coefficient=0.01)
    assert loss.item() == pytest.approx((softplus(-2) + softplus(2)) / 2 + 0.025, abs=1e-7)


def test_bradley_terry_matches_a_plain_loop_and_its_gradient():
    gen = torch.Generator().manual_seed(0)
    chosen = torch.randn(7, generator=gen, dtype=torch.float64, requires_grad=True)
    rejected = torch.randn(7, generator=gen, dtype=torch.float64)
    margin = torch.rand(7, generator=gen, dtype=torch.float64)
    kept = (chosen.detach().clone(), rejected.clone())
    loss, stats = bradley_terry_loss(chosen, rejected, margin, center_rewards_coefficient=0.1)
    expected, right = 0.0, 0
    for c, r, m in zip(chosen.tolist(), rejected.tolist(), margin.tolist()):
        expected += -math.log(1 / (1 + math.exp(-(c - r - m)))) / 7 + 0.1 * (c + r) ** 2 / 7
        right += c > r
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert stats["accuracy"].item() == pytest.approx(right / 7)
    loss.backward()
    for i, (c, r, m) in enumerate(zip(*kept, margin.tolist())):  # d/dc: -(1 - σ(c - r - m)) / B + 0.2 (c + r) / B
        grad = -(1 - 1 / (1 + math.exp(-(c.item() - r.item() - m)))) / 7 + 0.2 * (c.item() + r.item()) / 7
        assert chosen.grad[i].item() == pytest.approx(grad, abs=1e-12)
    assert torch.equal(chosen.detach(), kept[0]) and torch.equal(rejected, kept[1])  # inputs untouched


def test_bradley_terry_is_stable_for_large_differences():
    loss, _ = bradley_terry_loss(torch.tensor([0.0]), torch.tensor([200.0]))  # -log σ(-200) = 200 (naive log: inf)
    assert loss.item() == pytest.approx(200.0)
    loss, _ = bradley_terry_loss(torch.tensor([200.0]), torch.tensor([0.0]))
    assert 0 <= loss.item() < 1e-30


def test_implicit_rewards_by_hand():
    rewards = implicit_rewards(torch.tensor([-1.0, -4.0]), torch.tensor([-2.0, -3.0]), beta=0.5)
    assert torch.allclose(rewards, torch.tensor([0.5, -0.5]))


def test_dpo_sigmoid_and_ipo_by_hand():
    chosen, rejected = torch.tensor([-1.0]), torch.tensor([-3.0])
    ref_chosen, ref_rejected = torch.tensor([-2.0]), torch.tensor([-2.0])  # h = (−1 + 2) − (−3 + 2) = 2
    loss, stats = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.5)
    assert loss.item() == pytest.approx(softplus(-1.0), abs=1e-7)  # −log σ(β h) = −log σ(1)
    assert stats["rewards/chosen"].item() == pytest.approx(0.5)
    assert stats["rewards/rejected"].item() == pytest.approx(-0.5)
    assert stats["rewards/margins"].item() == pytest.approx(1.0)
    assert stats["rewards/accuracies"].item() == 1.0
    assert stats["logps/chosen"].item() == -1.0 and stats["logps/rejected"].item() == -3.0
    loss, _ = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.5, loss_type="ipo")
    assert loss.item() == pytest.approx((2 - 1 / (2 * 0.5)) ** 2)  # (h − 1/(2β))² = 1
    loss, _ = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.25, loss_type="ipo")
    assert loss.item() == pytest.approx((2 - 2) ** 2)  # the target margin reached: no loss
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.5, loss_type="hinge")


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_dpo_matches_a_plain_loop(loss_type):
    gen = torch.Generator().manual_seed(1)
    logps = [-10 * torch.rand(6, generator=gen, dtype=torch.float64) for _ in range(4)]
    beta = 0.3
    loss, stats = dpo_loss(*logps, beta=beta, loss_type=loss_type)
    total, acc, margins = 0.0, 0, 0.0
    for c, r, rc, rr in zip(*(x.tolist() for x in logps)):
        h = (c - rc) - (r - rr)
        total += (-math.log(1 / (1 + math.exp(-beta * h))) if loss_type == "sigmoid" else (h - 1 / (2 * beta)) ** 2) / 6
        acc += beta * (c - rc) > beta * (r - rr)
        margins += beta * h / 6
    assert loss.item() == pytest.approx(total, abs=1e-12)
    assert stats["rewards/accuracies"].item() == pytest.approx(acc / 6)
    assert stats["rewards/margins"].item() == pytest.approx(margins, abs=1e-12)


def test_dpo_at_the_reference_is_log_2_and_its_gradient_favours_chosen():
    """Policy = reference (step 0): loss log 2, rewards 0; the gradient raises log π(chosen), lowers rejected."""
    chosen = torch.tensor([-5.0, -7.0], requires_grad=True)
    rejected = torch.tensor([-6.0, -2.0], requires_grad=True)
    loss, stats = dpo_loss(chosen, rejected, chosen.detach(), rejected.detach(), beta=0.1)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)
    assert stats["rewards/margins"].item() == 0 and stats["rewards/accuracies"].item() == 0  # ties are not wins
    loss.backward()
    assert torch.allclose(chosen.grad, torch.full((2,), -0.1 * 0.5 / 2))  # −β σ(−0) / B
    assert torch.allclose(rejected.grad, torch.full((2,), 0.1 * 0.5 / 2))
