"""critic.backbone: reference — the value head reads the frozen reference model's hidden states, which the reference
log-prob pass computes anyway: the scoring pass keeps them, the update trains the head on them with no forward of its
own, and the value loss never reaches the policy's LoRA."""

import pytest
import torch
from test_rollout import _grads, make_cfg
from test_shared_critic import policy_loss_by_hand, scored_rollout

from rlhflab.algorithms.losses import value_loss
from rlhflab.algorithms.ppo import ppo_micro_step, value_mask
from rlhflab.models.forward import captured_hidden, response_logprobs
from rlhflab.models.loading import backbone
from rlhflab.session import load_setup


def reference_setup(model_dir, prompts_file, *extra):
    cfg = make_cfg(model_dir, prompts_file, "critic.backbone=reference", *extra)
    torch.manual_seed(0)
    return cfg, load_setup(cfg)


@pytest.mark.parametrize("layout", ["shared", "separate"])
def test_a_reference_critic_has_no_critic_adapter(tiny_model_dir, prompts_file, layout):
    _, setup = reference_setup(tiny_model_dir, prompts_file, f"model.roles={layout}")
    roles = setup.roles
    assert roles.critic_on_reference and not roles.own_critic and not roles.shared_trunk
    assert set(roles.policy.peft_config) == {"default"} and roles.targets["critic"] is None
    lora = [p for n, p in roles.policy.named_parameters() if "lora_" in n]
    assert roles.trainable_parameters() == [*lora, *roles.value_head.parameters()]


@pytest.mark.parametrize("granularity", ["token", "sequence"])
@pytest.mark.parametrize("hidden_logprobs", ["true", "false"])
@pytest.mark.parametrize("layout", ["shared", "separate"])
def test_values_from_the_reference_pass_equal_a_forward_of_the_reference(
    tiny_model_dir, prompts_file, granularity, hidden_logprobs, layout
):
    """The states kept by the scoring pass are the reference backbone's own (with either log-prob path), the values
    are the head on them, and the policy's (moved) adapter has no part in them."""
    extra = (
        f"critic.granularity={granularity}",
        f"fast_paths.hidden_logprobs={hidden_logprobs}",
        f"model.roles={layout}",
    )
    cfg, setup = reference_setup(tiny_model_dir, prompts_file, *extra)
    rollout, _ = scored_rollout(setup, cfg)
    roles, mask = setup.roles, rollout.attention_mask
    width = 1 if granularity == "sequence" else rollout.response_ids.shape[1]
    with torch.no_grad():
        with roles.reference_model() as reference:
            hidden = backbone(reference)(
                input_ids=rollout.input_ids,
                attention_mask=mask.long(),
                position_ids=(mask.long().cumsum(-1) - 1).clamp(min=0),
                use_cache=False,
            ).last_hidden_state  # (B, P + T, H)
        prompt_len = rollout.prompt_ids.shape[1]
        by_hand = hidden[:, prompt_len - 1 : prompt_len - 1 + width]  # (B, width, H)
        own_forward = roles.values(rollout, granularity)
        with captured_hidden(roles.actor()) as policy_hidden:
            response_logprobs(roles.actor(), rollout, 1.0)
        policy_values = roles.values_from_hidden(policy_hidden[0], rollout, granularity)
    assert rollout.critic_states.shape == (8, width, hidden.shape[-1])
    torch.testing.assert_close(rollout.critic_states, by_hand, atol=1e-6, rtol=0)
    assert rollout.values.shape == (8, width) and rollout.values.abs().sum() > 0
    torch.testing.assert_close(rollout.values, own_forward, atol=1e-6, rtol=0)
    manual = (by_hand.float() @ roles.value_head.weight.T + roles.value_head.bias).squeeze(-1)  # the linear head
    torch.testing.assert_close(rollout.values, manual, atol=1e-6, rtol=0)
    assert not torch.allclose(rollout.values, policy_values, atol=1e-3), "the values must not read the policy"


@pytest.mark.parametrize("head", ["linear", "mlp"])
@pytest.mark.parametrize("granularity", ["token", "sequence"])
def test_the_micro_step_runs_one_forward_and_the_value_loss_trains_the_head_alone(
    tiny_model_dir, prompts_file, granularity, head
):
    """Against a plain reference: the policy loss from a forward of the policy, the value loss from a forward of the
    reference (no gradient reaches it), ``(policy + vf_coef · value).backward()``. The micro-step itself runs one
    backbone forward (the policy's); the policy's LoRA gets exactly the policy loss's gradient."""
    extra = (f"critic.granularity={granularity}", "algorithm.vf_coef=0.3", f"critic.head={head}")
    cfg, setup = reference_setup(tiny_model_dir, prompts_file, *extra)
    rollout, params = scored_rollout(setup, cfg)
    roles, a, tokens, rows = setup.roles, cfg.algorithm, rollout.response_mask.sum(), len(rollout)
    forwards = []
    handle = backbone(roles.policy).register_forward_hook(lambda *_: forwards.append(1))
    try:
        ppo_micro_step(roles, rollout, cfg, tokens, rows, 0.05)
    finally:
        handle.remove()
    assert len(forwards) == 1
    stepped = _grads(params)
    for p in params:
        p.grad = None

    loss_pi = policy_loss_by_hand(roles, rollout, granularity, a.clip_eps)
    loss_pi.backward()
    policy_only = _grads(params)
    values = roles.values(rollout, granularity)  # a fresh forward of the reference; the head gets the gradient
    value_tokens = tokens if granularity == "token" else rows
    vmask = value_mask(rollout, granularity)
    loss_v, _ = value_loss(
        values, rollout.values, rollout.returns, vmask, a.clip_eps_value, num_tokens=value_tokens, num_seqs=rows
    )
    (0.3 * loss_v).backward()
    reference = _grads(params)
    lora = sum(1 for n, _ in roles.policy.named_parameters() if "lora_" in n)
    assert all(g.abs().sum() > 0 for g in stepped[lora:]), "every layer of the value head learns"
    for s, r in zip(stepped, reference):
        torch.testing.assert_close(s, r, atol=1e-6, rtol=1e-5)
    for s, p in zip(stepped[:lora], policy_only[:lora]):
        torch.testing.assert_close(s, p, atol=1e-7, rtol=1e-6)


def test_the_report_says_what_the_value_head_reads():
    from rlhflab.reporting.describe import describe_algorithm

    def ppo(backbone):
        return describe_algorithm({"algorithm": {"name": "ppo"}, "critic": {"backbone": backbone}})

    assert "(LoRA + value head, token-level values" in ppo("separate")
    assert "(value head on the policy's hidden states," in ppo("shared")
    assert "(value head on the reference's hidden states, token-level" in ppo("reference")
