"""update.update on a toy policy whose logprobs are one trainable (B, T) tensor: the loss it builds, its β, its
aggregation constant, the learning rate it applies and logs, early stopping and masked truncated rows."""

from types import SimpleNamespace

import pytest
import torch

from rlhflab.algorithms import group
from rlhflab.algorithms.losses import aggregate
from rlhflab.batch import Rollout
from rlhflab.config import build_config
from rlhflab.ops import kl_penalty
from rlhflab.update import update

MASK = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.bool)  # (4, 3)
ADVANTAGES = torch.tensor([[1.0], [-2.0], [0.5], [3.0]])  # (4, 1)


def toy(monkeypatch, theta: torch.Tensor):
    """Row i's logprobs are ``theta[i]`` (the prompt id of row i is i): a policy without a network."""

    def response_logprobs(model, micro, temperature, with_entropy=False, rows_at_once=None):
        logprobs = theta[micro.prompt_ids[:, 0]]  # (b, T)
        return logprobs, torch.zeros_like(logprobs) if with_entropy else None

    monkeypatch.setattr(group, "response_logprobs", response_logprobs)
    return SimpleNamespace(roles=SimpleNamespace(actor=lambda: None))


def toy_rollout(theta, mask=MASK, advantages=ADVANTAGES, truncated=None):
    b, t = mask.shape
    return Rollout(
        torch.arange(b)[:, None],
        torch.ones(b, 1, dtype=torch.bool),
        torch.zeros(b, t, dtype=torch.long),
        mask,
        logprobs=theta.detach().clone(),
        ref_logprobs=theta.detach() - 0.3 * torch.arange(t),
        scores=torch.zeros(b),
        advantages=advantages,
        **({} if truncated is None else {"truncated": truncated}),
    )


def toy_cfg(*overrides):
    return build_config(
        preset="demo-grpo",
        overrides=[
            "rollout.batch_size=4",
            "train.micro_batch_size=2",
            "algorithm.num_minibatches=1",
            "algorithm.ppo_epochs=1",
            "rollout.max_new_tokens=10",
            *overrides,
        ],
    )


def run_update(setup, rollout, cfg, theta, kl_coef=0.2, lr=0.1, scheduler=None):
    optimizer = torch.optim.SGD([theta], lr=lr)
    scheduler = scheduler(optimizer) if scheduler else torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    skips = {"total": 0, "in_a_row": 0}
    stats, _ = update(setup, rollout, cfg, optimizer, scheduler, [theta], torch.Generator(), skips, kl_coef=kl_coef)
    return stats, scheduler


def step0_loss(theta, kl_coef, agg, **kw):
    """At step 0 (ratio 1) the GRPO per-token loss is −A + β·k3."""
    k3 = kl_penalty(theta.detach(), theta.detach() - 0.3 * torch.arange(3), "k3")
    return aggregate(-ADVANTAGES + kl_coef * k3, MASK, agg, **kw).item()


def test_grpo_loss_uses_the_kl_coef_it_is_given_not_the_configs(monkeypatch):
    """The adaptive controller's β (passed in) is the one in the loss; the config's fixed 0.2 is not."""
    theta = torch.randn(4, 3, requires_grad=True)
    setup, cfg = toy(monkeypatch, theta), toy_cfg()
    assert cfg.algorithm.kl_coef == 0.2
    stats, _ = run_update(setup, toy_rollout(theta), cfg, theta, kl_coef=0.7)
    assert stats["loss/policy"] == pytest.approx(step0_loss(theta, 0.7, "token_mean"), abs=1e-6)
    assert stats["loss/policy"] != pytest.approx(step0_loss(theta, 0.2, "token_mean"), abs=1e-3)


def test_seq_sum_constant_divides_by_max_new_tokens_not_the_longest_response(monkeypatch):
    """Dr. GRPO: Σ ℓ·m / (B · L) with L = rollout.max_new_tokens (10), fixed across steps, not this batch's T (3)."""
    theta = torch.randn(4, 3, requires_grad=True)
    setup, cfg = toy(monkeypatch, theta), toy_cfg("algorithm.loss_agg=seq_sum_constant")
    stats, _ = run_update(setup, toy_rollout(theta), cfg, theta, kl_coef=0.2)
    expected = step0_loss(theta, 0.2, "seq_sum_constant", num_seqs=4, max_len=10)
    assert stats["loss/policy"] == pytest.approx(expected, abs=1e-6)


def test_lr_factor_hand_values():
    """Warm-up (u + 1) / (warmup + 1) from the first update (never 0), then cosine to 0 at ``total``."""
    from rlhflab.schedule import lr_factor

    cosine = [lr_factor(u, warmup=2, total=6, schedule="cosine") for u in range(6)]
    # u = 3: progress 1/4 → ½(1 + cos(π/4)) = 0.853553; u = 4: ½; u = 5: ½(1 + cos(3π/4)) = 0.146447
    assert cosine == pytest.approx([1 / 3, 2 / 3, 1.0, 0.8535534, 0.5, 0.1464466], abs=1e-7)
    constant = [lr_factor(u, warmup=2, total=6, schedule="constant") for u in range(6)]
    assert constant == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0, 1.0, 1.0])
    assert lr_factor(0, warmup=0, total=6, schedule="cosine") == 1.0  # no warm-up: the peak at once


def test_the_first_update_runs_at_a_nonzero_rate_and_lr_logs_the_applied_rate(monkeypatch):
    """Two updates in the step (2 epochs): ``lr`` is the first one's rate, 0.1 · 1/3, the one SGD applied."""
    from rlhflab.schedule import build_scheduler

    theta = torch.randn(4, 3, requires_grad=True)
    setup, cfg = toy(monkeypatch, theta), toy_cfg("algorithm.ppo_epochs=2")
    seen = []
    step = torch.optim.SGD.step

    def recording_step(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", recording_step)
    stats, scheduler = run_update(
        setup, toy_rollout(theta), cfg, theta, scheduler=lambda opt: build_scheduler(opt, 2, 6, "cosine")
    )
    assert seen == pytest.approx([0.1 / 3, 0.2 / 3])
    assert stats["lr"] == pytest.approx(0.1 / 3)
    assert scheduler.get_last_lr()[0] == pytest.approx(0.1)  # the third update's rate, after warm-up


def count_steps(monkeypatch):
    calls = []
    step = torch.optim.SGD.step

    def counting_step(self, *args, **kwargs):
        calls.append(1)
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", counting_step)
    return calls


def test_target_kl_stops_the_epochs_once_an_epochs_mean_approxkl_exceeds_it(monkeypatch):
    """Epoch 1 runs at the sampling policy (approx-KL 0); its update moves θ, so epoch 2's approx-KL > 1e-6 and
    epoch 3 is skipped. The scheduler still advances by all K·M updates, so the lr schedule ignores early stops."""
    theta = torch.randn(4, 3, requires_grad=True)
    setup, cfg = toy(monkeypatch, theta), toy_cfg("algorithm.ppo_epochs=3", "algorithm.target_kl=1e-6")
    steps = count_steps(monkeypatch)
    stats, scheduler = run_update(setup, toy_rollout(theta), cfg, theta, lr=1.0)
    assert len(steps) == 2 and stats["policy/epochs"] == 2
    assert scheduler.last_epoch == 3
    assert stats["policy/approxkl"] > 1e-6  # the mean over the 2 updates that ran


def test_without_target_kl_every_epoch_runs(monkeypatch):
    theta = torch.randn(4, 3, requires_grad=True)
    setup, cfg = toy(monkeypatch, theta), toy_cfg("algorithm.ppo_epochs=3")
    steps = count_steps(monkeypatch)
    stats, scheduler = run_update(setup, toy_rollout(theta), cfg, theta, lr=1.0)
    assert len(steps) == 3 and "policy/epochs" not in stats and scheduler.last_epoch == 3


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean", "seq_sum_constant"])
def test_masked_truncated_completions_change_nothing_in_the_loss(monkeypatch, agg):
    """Rows 1 and 3 never reached EOS: with rollout.mask_truncated_completions their advantages can be anything,
    the loss, the stats and the update are the same, and their θ rows get no gradient."""
    truncated = torch.tensor([False, True, False, True])
    results = []
    for scale in (1.0, -50.0):
        theta = torch.randn(4, 3, generator=torch.Generator().manual_seed(0)).requires_grad_()
        theta0 = theta.detach().clone()
        setup = toy(monkeypatch, theta)
        cfg = toy_cfg("rollout.mask_truncated_completions=true", f"algorithm.loss_agg={agg}")
        rollout = toy_rollout(theta, advantages=torch.where(truncated[:, None], scale, ADVANTAGES), truncated=truncated)
        stats, _ = run_update(setup, rollout, cfg, theta)
        assert torch.equal(theta.detach()[truncated], theta0[truncated])
        results.append((stats, theta.detach().clone()))
    (stats_a, theta_a), (stats_b, theta_b) = results
    assert stats_a == stats_b and torch.equal(theta_a, theta_b)
    if agg == "token_mean":  # the mean over the kept rows' tokens only
        kept = ~truncated
        k3 = kl_penalty(theta0, theta0 - 0.3 * torch.arange(3), "k3")
        expected = aggregate((-ADVANTAGES + 0.2 * k3)[kept], MASK[kept], "token_mean").item()
        assert stats_a["loss/policy"] == pytest.approx(expected, abs=1e-6)


def test_missing_eos_penalty_hand_values():
    from rlhflab.rewards.base import missing_eos_penalty

    scores = torch.tensor([0.5, -1.0, 2.0, 0.0])
    ended = torch.tensor([True, False, False, True])
    assert missing_eos_penalty(scores, ended, 1.5).tolist() == [0.5, -2.5, 0.5, 0.0]
    assert scores.tolist() == [0.5, -1.0, 2.0, 0.0]  # inputs are never modified
