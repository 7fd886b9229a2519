"""critic.backbone: shared — the value head on the policy's own trunk: one forward and one backward serve the policy and
value losses, with the numbers of the plain path (a separate forward of the policy for the values)."""

import json
import shutil
from dataclasses import replace

import pytest
import torch
from conftest import train_argv
from test_rollout import PROMPTS, _grads, make_cfg

from rlhflab.algorithms.losses import ppo_policy_loss, value_loss
from rlhflab.algorithms.ppo import ppo_advantages, ppo_micro_step, value_mask
from rlhflab.cli import main
from rlhflab.errors import UserError
from rlhflab.models.forward import captured_hidden, response_logprobs
from rlhflab.rollout import sample_rollout, score_rollout
from rlhflab.session import load_setup


def shared_setup(model_dir, prompts_file, *extra):
    cfg = make_cfg(model_dir, prompts_file, "critic.backbone=shared", *extra)
    torch.manual_seed(0)
    return cfg, load_setup(cfg)


def scored_rollout(setup, cfg):
    """A scored PPO rollout with random scores, and the trainable weights moved off their zero initialisation."""
    g = torch.Generator().manual_seed(0)
    rollout, _ = sample_rollout(setup.roles.actor(), setup.tokenizer, PROMPTS * 2, cfg, g, setup.device)
    params = setup.roles.trainable_parameters()
    with torch.no_grad():
        for p in params:
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    rollout, _ = score_rollout(setup, replace(rollout, scores=torch.randn(8, generator=g)), cfg)
    rollout, _ = ppo_advantages(rollout, cfg, 0.05)
    return rollout, params


def policy_loss_by_hand(roles, rollout, granularity, clip_eps):
    """The plain reference's policy loss: a fresh forward of the policy, the clipped surrogate on its log-probs."""
    logprobs, _ = response_logprobs(roles.actor(), rollout, 1.0)
    advantages = rollout.advantages if granularity == "token" else rollout.advantages[:, 0]
    return ppo_policy_loss(logprobs, rollout.logprobs, advantages, rollout.response_mask, clip_eps)[0]


@pytest.mark.parametrize("layout", ["shared", "separate"])
def test_a_shared_trunk_has_no_critic_adapter(tiny_model_dir, prompts_file, layout):
    _, setup = shared_setup(tiny_model_dir, prompts_file, f"model.roles={layout}")
    roles = setup.roles
    assert roles.shared_trunk and roles.critic is roles.policy and roles.targets["critic"] is None
    assert set(roles.policy.peft_config) == {"default"}
    lora = [p for n, p in roles.policy.named_parameters() if "lora_" in n]
    assert roles.trainable_parameters() == [*lora, *roles.value_head.parameters()]
    assert sum(1 for m in roles.models() if m is not roles.reference) == 1  # no critic copy under "separate"


@pytest.mark.parametrize("granularity", ["token", "sequence"])
@pytest.mark.parametrize("hidden_logprobs", ["true", "false"])
def test_values_from_the_policy_pass_equal_a_forward_of_their_own(
    tiny_model_dir, prompts_file, granularity, hidden_logprobs
):
    """Both log-prob paths (hidden states, or logits through the whole model) hand the value head the same hidden
    states as the backbone's own forward: the values are bit-identical."""
    extra = (f"critic.granularity={granularity}", f"fast_paths.hidden_logprobs={hidden_logprobs}")
    cfg, setup = shared_setup(tiny_model_dir, prompts_file, *extra)
    rollout, _ = scored_rollout(setup, cfg)
    roles = setup.roles
    with torch.no_grad():
        with captured_hidden(roles.actor()) as hidden:
            response_logprobs(roles.actor(), rollout, 1.0)
        assert len(hidden) == 1
        from_policy_pass = roles.values_from_hidden(hidden[0], rollout, granularity)
        own_forward = roles.values(rollout, granularity)
    assert from_policy_pass.shape == (8, rollout.response_ids.shape[1] if granularity == "token" else 1)
    assert from_policy_pass.abs().sum() > 0
    assert torch.equal(from_policy_pass, own_forward)
    # the scoring pass took its values from the old-logprobs pass: the same numbers
    torch.testing.assert_close(rollout.values, own_forward, atol=1e-6, rtol=0)


@pytest.mark.parametrize("backbone", ["shared", "reference"])
@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_scoring_pass_values_start_at_zero_and_kl_at_zero(tiny_model_dir, prompts_file, head, backbone):
    cfg, setup = shared_setup(tiny_model_dir, prompts_file, f"critic.head={head}", f"critic.backbone={backbone}")
    assert setup.roles.critic_on_reference == (backbone == "reference")
    g = torch.Generator().manual_seed(0)
    rollout, _ = sample_rollout(setup.roles.actor(), setup.tokenizer, PROMPTS * 2, cfg, g, setup.device)
    scored, _ = score_rollout(setup, replace(rollout, scores=torch.randn(8)), cfg)
    mask = scored.response_mask
    assert torch.equal(scored.values, torch.zeros_like(scored.values))
    assert torch.equal(scored.logprobs[mask], scored.ref_logprobs[mask])


@pytest.mark.parametrize("head", ["linear", "mlp"])
@pytest.mark.parametrize("granularity", ["token", "sequence"])
def test_one_backward_gives_the_gradient_of_policy_plus_vf_coef_times_value(
    tiny_model_dir, prompts_file, granularity, head
):
    """The micro-step's gradient against a plain reference: the policy loss from one forward, the value loss from a
    second, separate forward of the same (policy) adapter, ``(policy + vf_coef · value).backward()``. The value loss
    also moves the policy's LoRA weights (what sharing the trunk means). With critic.head mlp every layer of the head
    gets its gradient too."""
    extra = (f"critic.granularity={granularity}", "algorithm.vf_coef=0.3", f"critic.head={head}")
    cfg, setup = shared_setup(tiny_model_dir, prompts_file, *extra)
    rollout, params = scored_rollout(setup, cfg)
    roles, a, tokens, rows = setup.roles, cfg.algorithm, rollout.response_mask.sum(), len(rollout)
    ppo_micro_step(roles, rollout, cfg, tokens, rows, 0.05)
    shared = _grads(params)
    for p in params:
        p.grad = None

    loss_pi = policy_loss_by_hand(roles, rollout, granularity, a.clip_eps)
    values = roles.values(rollout, granularity)
    value_tokens, max_len = (tokens, 6) if granularity == "token" else (rows, 1)
    vmask = value_mask(rollout, granularity)
    loss_v, _ = value_loss(
        values, rollout.values, rollout.returns, vmask, a.clip_eps_value, num_tokens=value_tokens, num_seqs=rows
    )
    loss_pi.backward(retain_graph=True)
    policy_only = _grads(params)
    (0.3 * loss_v).backward()
    reference = _grads(params)
    assert all(g.abs().sum() > 0 for g in shared)
    for s, r in zip(shared, reference):
        torch.testing.assert_close(s, r, atol=1e-6, rtol=1e-5)
    lora = sum(1 for n, _ in roles.policy.named_parameters() if "lora_" in n)
    moved = [not torch.allclose(p, r) for p, r in zip(policy_only[:lora], reference[:lora])]
    assert any(moved), "the value loss reaches the policy's LoRA weights"


@pytest.mark.parametrize("head", ["linear", "mlp"])
@pytest.mark.parametrize("granularity", ["token", "sequence"])
def test_shared_grad_false_keeps_the_value_loss_out_of_the_policy_lora(tiny_model_dir, prompts_file, granularity, head):
    """critic.shared_grad: false — the same one forward and one backward, but the value head reads the hidden states
    detached: the policy's LoRA gets exactly the policy loss's gradient, the value head vf_coef · the value loss's."""
    extra = (
        f"critic.granularity={granularity}",
        "algorithm.vf_coef=0.3",
        "critic.shared_grad=false",
        f"critic.head={head}",
    )
    cfg, setup = shared_setup(tiny_model_dir, prompts_file, *extra)
    rollout, params = scored_rollout(setup, cfg)
    roles, a, tokens, rows = setup.roles, cfg.algorithm, rollout.response_mask.sum(), len(rollout)
    ppo_micro_step(roles, rollout, cfg, tokens, rows, 0.05)
    detached = _grads(params)
    for p in params:
        p.grad = None

    loss_pi = policy_loss_by_hand(roles, rollout, granularity, a.clip_eps)
    loss_pi.backward()
    with torch.no_grad():
        with captured_hidden(roles.actor()) as hidden:
            response_logprobs(roles.actor(), rollout, 1.0)
    values = roles.values_from_hidden(hidden[0], rollout, granularity)  # grad reaches the head only
    value_tokens = tokens if granularity == "token" else rows
    loss_v, _ = value_loss(
        values,
        rollout.values,
        rollout.returns,
        value_mask(rollout, granularity),
        a.clip_eps_value,
        num_tokens=value_tokens,
        num_seqs=rows,
    )
    (0.3 * loss_v).backward()
    reference = _grads(params)
    lora = sum(1 for n, _ in roles.policy.named_parameters() if "lora_" in n)
    assert all(g.abs().sum() > 0 for g in detached[lora:]), "the value head still learns"
    for d, r in zip(detached, reference):
        torch.testing.assert_close(d, r, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backbone", ["shared", "reference"])
@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_a_shared_trunk_run_saves_no_critic_adapter_and_resumes(tiny_model_dir, prompts_file, tmp_path, head, backbone):
    """`rlhflab train` with critic.backbone=shared: values are learned (value loss logged), final/ holds the policy
    adapter and the value head only, and a run resumed from its step-1 checkpoint ends with the same weights (the mlp
    head's too: resume restores it from the checkpoint's value_head.safetensors)."""
    from safetensors.torch import load_file

    extra = ["--set", f"critic.backbone={backbone}", "--set", "checkpoint.every=1", "--set", "eval.enabled=false"]
    extra += ["--set", f"critic.head={head}"]
    full = tmp_path / "full"
    assert main(train_argv(tiny_model_dir, prompts_file, full, *extra, steps=2, batch=4, micro=2)) == 0
    rows = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["objective/kl"] == 0.0 and rows[1]["loss/value"] > 0 and "val/explained_variance" in rows[1]
    assert (full / "final" / "value_head.safetensors").is_file() and not (full / "final" / "critic").exists()
    assert not (full / "checkpoints" / "step-000001" / "critic").exists()
    trunk = "the policy's" if backbone == "shared" else "the reference's (adapters disabled)"
    assert f"on {trunk} last hidden state" in (full / "final" / "README.md").read_text()  # the model card says

    resumed = tmp_path / "resumed"  # as if killed after step 2's metrics, before its end
    shutil.copytree(full, resumed)
    shutil.rmtree(resumed / "final")
    assert main(["train", "--resume", "--output-dir", str(resumed)]) == 0
    for name in ("adapter_model.safetensors", "value_head.safetensors"):
        a, b = load_file(str(full / "final" / name)), load_file(str(resumed / "final" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    keys = {"weight", "bias"} if head == "linear" else {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert set(load_file(str(full / "final" / "value_head.safetensors"))) == keys


@pytest.mark.parametrize("backbone", ["shared", "separate"])
def test_the_mlp_head_starts_at_zero_and_round_trips_through_save_and_load(
    tiny_model_dir, prompts_file, tmp_path, backbone
):
    """critic.head: mlp on either backbone — Linear(H, H) → GELU → Linear(H, 1) in fp32, the last layer zero: step-0
    values are exactly 0. Moved off zero, saved and loaded into a fresh setup, it gives bit-identical values; a linear
    head's config refuses the file in one line naming critic.head."""
    extra = (f"critic.backbone={backbone}", "critic.head=mlp")
    cfg = make_cfg(tiny_model_dir, prompts_file, *extra)
    torch.manual_seed(0)
    setup = load_setup(cfg)
    head = setup.roles.value_head
    assert [type(m) for m in head] == [torch.nn.Linear, torch.nn.GELU, torch.nn.Linear]
    assert all(p.dtype == torch.float32 for p in head.parameters())
    assert head[0].weight.shape == (head[0].in_features, head[0].in_features)
    assert head[0].weight.abs().sum() > 0 and not head[2].weight.any() and not head[2].bias.any()
    g = torch.Generator().manual_seed(0)
    rollout, _ = sample_rollout(setup.roles.actor(), setup.tokenizer, PROMPTS * 2, cfg, g, setup.device)
    with torch.no_grad():
        assert torch.equal(setup.roles.values(rollout), torch.zeros(rollout.response_ids.shape))
    rollout, params = scored_rollout(setup, cfg)
    with torch.no_grad():
        before = setup.roles.values(rollout)
    assert before.abs().sum() > 0
    setup.roles.save(tmp_path / "saved")

    torch.manual_seed(1)  # another initialisation: every number below comes from the files
    fresh = load_setup(cfg)
    with torch.no_grad():
        assert not torch.equal(fresh.roles.values(rollout), before)
        fresh.roles.load(tmp_path / "saved")
        assert torch.equal(fresh.roles.values(rollout), before)
    linear = load_setup(make_cfg(tiny_model_dir, prompts_file, f"critic.backbone={backbone}"))
    with pytest.raises(UserError, match="critic.head: .* holds a mlp value head, .*; set critic.head: mlp$"):
        linear.roles.load(tmp_path / "saved")
