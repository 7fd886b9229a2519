"""RLOO / GRPO glue: KL folded into the sequence reward for RLOO, group normalisation for GRPO (hand values)."""

import pytest
import torch

from rlhflab.algorithms.registry import algorithm_for
from rlhflab.batch import Rollout
from rlhflab.config import build_config


def group_advantages(rollout, cfg, kl_coef):
    return algorithm_for(cfg).advantages(rollout, cfg, kl_coef)


def rollout_with(scores, logprobs, ref_logprobs, mask):
    b, t = mask.shape
    ids = torch.zeros(b, t, dtype=torch.long)
    return Rollout(
        ids[:, :1],
        torch.ones(b, 1, dtype=torch.bool),
        ids,
        mask,
        logprobs=logprobs,
        ref_logprobs=ref_logprobs,
        scores=torch.tensor(scores),
    )


def test_rloo_folds_summed_k1_into_the_reward():
    cfg = build_config(
        preset="demo-rloo",
        overrides=["rollout.samples_per_prompt=2", "rollout.batch_size=4", "train.micro_batch_size=2"],
    )
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0]], dtype=torch.bool)
    logprobs = torch.tensor([[-1.0, -1.0, -9.0], [-1.0, -1.0, -1.0], [-2.0, 5.0, 5.0], [-1.0, -1.0, 0.0]])
    ref = torch.tensor([[-2.0, -1.5, 0.0], [-1.0, -1.0, -1.0], [-1.0, 0.0, 0.0], [-1.0, -1.0, 0.0]])
    # KL sums (masked): 1.5, 0, -1, 0 → R = score − 0.1·KL with scores 1, 2, 0, 3 → 0.85, 2, 0.1, 3
    out, _ = group_advantages(rollout_with([1.0, 2.0, 0.0, 3.0], logprobs, ref, mask), cfg, kl_coef=0.1)
    # leave-one-out with k = 2: A_i = R_i − R_j
    expected = torch.tensor([[0.85 - 2.0], [2.0 - 0.85], [0.1 - 3.0], [3.0 - 0.1]])
    torch.testing.assert_close(out.advantages, expected, atol=1e-6, rtol=0)


def test_grpo_normalises_within_groups_and_ignores_kl_here():
    cfg = build_config(
        preset="demo-grpo", overrides=["rollout.batch_size=4", "train.micro_batch_size=2"]
    )  # k = 4: one group
    mask = torch.ones(4, 2, dtype=torch.bool)
    logprobs = torch.randn(4, 2)
    out, _ = group_advantages(rollout_with([1.0, 2.0, 3.0, 6.0], logprobs, logprobs - 1, mask), cfg, kl_coef=0.5)
    # mean 3, unbiased std sqrt((4 + 1 + 0 + 9) / 3) = sqrt(14/3)
    std = (14 / 3) ** 0.5
    expected = torch.tensor([[-2.0], [-1.0], [0.0], [3.0]]) / (std + 1e-4)
    torch.testing.assert_close(out.advantages, expected, atol=1e-6, rtol=0)


def test_grpo_without_scale_only_centres():
    cfg = build_config(
        preset="demo-grpo",
        overrides=["rollout.batch_size=4", "train.micro_batch_size=2", "algorithm.group_scale=false"],
    )
    mask = torch.ones(4, 1, dtype=torch.bool)
    out, _ = group_advantages(rollout_with([1.0, 2.0, 3.0, 6.0], torch.zeros(4, 1), torch.zeros(4, 1), mask), cfg, 0.0)
    assert out.advantages.flatten().tolist() == pytest.approx([-2.0, -1.0, 0.0, 3.0])


@pytest.mark.parametrize(
    ("preset", "overrides", "expected"),
    [
        ("imdb-pythia-410m-grpo", [], True),
        ("demo-grpo", ["algorithm.num_minibatches=1"], True),
        ("demo-grpo", [], False),  # 2 minibatches: the second runs at new parameters
        ("imdb-pythia-410m-grpo", ["train.dropout=true"], False),  # the update's noise would become the old ones
        ("demo-rloo", [], False),  # RLOO's KL is in the reward, needed before the update
        ("demo-ppo", [], False),  # so is PPO's
    ],
)
def test_old_logprobs_from_the_first_epoch_only_where_they_are_the_same_numbers(preset, overrides, expected):
    cfg = build_config(preset=preset, overrides=overrides)
    assert algorithm_for(cfg).measures_old_logprobs(cfg) is expected


def test_update_refuses_to_measure_old_logprobs_over_several_minibatches():
    """Past the first minibatch the parameters have moved: its logprobs are no longer the sampling policy's."""
    from rlhflab.update import update

    cfg = build_config(preset="demo-grpo")  # 2 minibatches per epoch
    rollout = rollout_with([1.0, 0.0], None, None, torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="num_minibatches=1"):
        update(None, rollout, cfg, None, None, [], torch.Generator(), {"total": 0, "in_a_row": 0}, kl_coef=0.2)


def test_dr_grpo_by_default_has_no_batch_std_scaling():
    """group_scale=false with the default whiten_advantages (auto): A = R − mean_group, not rescaled by the batch
    std (which whitening would put back: here std 0.5 → advantages × 2)."""
    cfg = build_config(
        overrides=[
            "algorithm.name=grpo",
            "algorithm.group_scale=false",
            "rollout.samples_per_prompt=2",
            "rollout.batch_size=4",
            "train.micro_batch_size=2",
        ]
    )
    mask = torch.ones(4, 1, dtype=torch.bool)
    out, _ = group_advantages(rollout_with([1.0, 2.0, 5.0, 4.0], torch.zeros(4, 1), torch.zeros(4, 1), mask), cfg, 0.0)
    assert out.advantages.flatten().tolist() == pytest.approx([-0.5, 0.5, 0.5, -0.5])
