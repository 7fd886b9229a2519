"""DESIGN §3.1–3.4 and §3.10–3.11 on a tiny random GPT-NeoX: masks, padding, sampling/scoring, step 0, accumulation."""

from dataclasses import replace

import pytest
import torch
from peft.tuners.lora import Linear as LoraLinear
from torch.utils.checkpoint import CheckpointPolicy

from rlhflab.algorithms.losses import ppo_policy_loss
from rlhflab.algorithms.ppo import ppo_advantages, ppo_micro_step
from rlhflab.batch import Rollout
from rlhflab.config import build_config
from rlhflab.errors import UserError
from rlhflab.fastpaths import plain_lm_head
from rlhflab.models.forward import forward_logits, position_ids, response_logprobs
from rlhflab.models.loading import keep_products, load_causal_lm, load_tokenizer
from rlhflab.ops import entropy_from_logits, logprobs_from_logits
from rlhflab.rollout import generate, response_mask, sample_rollout, score_rollout, tokenize_prompts
from rlhflab.session import load_setup

PROMPTS = ["the movie was", "i really hated this film because the plot", "honestly", "this is the worst"]


def make_cfg(model_dir, prompts_file, *extra):
    return build_config(
        overrides=[
            f"model.name={model_dir}",
            "model.device=cpu",
            "model.dtype=fp32",
            "data.source=file",
            f"data.prompts_file={prompts_file}",
            "rollout.batch_size=8",
            "train.micro_batch_size=8",
            "rollout.max_new_tokens=6",
            *extra,
        ]
    )


def test_response_mask_keeps_the_first_eos_only():
    eos = 0
    ids = torch.tensor([[5, 0, 7, 0], [5, 6, 7, 8], [0, 1, 1, 1], [5, 0, 0, 0]])
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(response_mask(ids, eos), expected)


def test_pythia_tokenizer_saved_with_pad_eq_eos_gets_a_real_pad(shared_assets):
    tok = load_tokenizer(str(shared_assets / "pythia-410m-deduped"))
    assert tok.eos_token_id == 0 and tok.pad_token_id == 1 and tok.padding_side == "left"


def test_eos_inside_a_response_stays_in_the_mask_with_pad_eq_eos(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    tok.pad_token = tok.eos_token  # the trap: pad id == eos id
    ids = torch.tensor([[7, 8, tok.eos_token_id, tok.pad_token_id, tok.pad_token_id]])
    assert response_mask(ids, tok.eos_token_id).tolist() == [[True, True, True, False, False]]


def _rollout(model_dir, prompts, response_len=5, seed=0):
    tok = load_tokenizer(str(model_dir))
    ids, mask = tokenize_prompts(tok, prompts, 32, torch.device("cpu"))
    g = torch.Generator().manual_seed(seed)
    response = torch.randint(2, len(tok), (len(prompts), response_len), generator=g)
    return tok, Rollout(ids, mask, response, torch.ones_like(response, dtype=torch.bool))


def test_left_padded_batch_equals_rows_alone(tiny_model_dir):
    model = load_causal_lm(str(tiny_model_dir))
    tok, rollout = _rollout(tiny_model_dir, PROMPTS)
    assert not rollout.prompt_mask.all(), "prompts must be padded for this test to mean anything"
    batched, _ = response_logprobs(model, rollout, 1.0)
    for i, prompt in enumerate(PROMPTS):
        ids, mask = tokenize_prompts(tok, [prompt], 32, torch.device("cpu"))
        alone = Rollout(ids, mask, rollout.response_ids[i : i + 1], rollout.response_mask[i : i + 1])
        torch.testing.assert_close(batched[i : i + 1], response_logprobs(model, alone, 1.0)[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_generation_logprobs_match_a_fresh_forward(tiny_model_dir, temperature):
    model = load_causal_lm(str(tiny_model_dir))
    tok = load_tokenizer(str(tiny_model_dir))
    ids, mask = tokenize_prompts(tok, PROMPTS, 32, torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    response, sample_logprobs = generate(model, ids, mask, 8, tok.eos_token_id, tok.pad_token_id, g, temperature)
    rmask = response_mask(response, tok.eos_token_id)
    scored, _ = response_logprobs(model, Rollout(ids, mask, response, rmask), temperature)
    torch.testing.assert_close(scored[rmask], sample_logprobs[rmask], atol=1e-5, rtol=0)


def test_lm_head_gets_contiguous_rows_of_the_predicting_positions(tiny_model_dir):
    """The scoring pass projects exactly positions P-1 .. P+T-2 and generation's prefill only P-1, each handed to
    the LM head as a contiguous (B, n, H) tensor: a strided slice would run as a bmm over B copies of the head's
    weight (seconds per pass with bf16 on a CPU at the Pythia-410m shape)."""
    model = load_causal_lm(str(tiny_model_dir))
    tok, rollout = _rollout(tiny_model_dir, PROMPTS)
    (batch, prompt_len), response_len = rollout.prompt_ids.shape, rollout.response_ids.shape[1]
    head_inputs = []
    model.get_output_embeddings().register_forward_pre_hook(lambda _module, args: head_inputs.append(args[0]))
    with torch.no_grad():
        logits = forward_logits(model, rollout)
        generate(model, rollout.prompt_ids, rollout.prompt_mask, 2, -1, tok.pad_token_id, torch.Generator())
        mask = rollout.attention_mask
        every = model(input_ids=rollout.input_ids, attention_mask=mask.long(), position_ids=position_ids(mask)).logits
    scored, prefill = head_inputs[0], head_inputs[1]
    assert scored.shape == (batch, response_len, model.config.hidden_size) and scored.is_contiguous()
    assert prefill.shape == (batch, 1, model.config.hidden_size) and prefill.is_contiguous()
    torch.testing.assert_close(logits, every[:, prompt_len - 1 : prompt_len - 1 + response_len], atol=1e-5, rtol=0)


def test_logprobs_from_hidden_states_equal_the_logits_path(tiny_model_dir, prompts_file):
    """A plain LM head: response_logprobs never builds (B, T, V) logits, and gives the numbers and the LoRA
    gradients of the logits path (forward_logits + logprobs_from_logits), for the policy and the reference."""
    setup = load_setup(make_cfg(tiny_model_dir, prompts_file))
    roles = setup.roles
    tok, rollout = _rollout(tiny_model_dir, PROMPTS, response_len=6)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # move LoRA away from its zero init so the policy differs from the reference
        for p in roles.trainable_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    actor = roles.actor()
    assert plain_lm_head(actor) is actor.get_output_embeddings()
    head_calls = []
    actor.get_output_embeddings().register_forward_hook(lambda *_: head_calls.append(1))
    upstream = torch.randn(rollout.response_ids.shape, generator=g)
    params = [p for name, p in actor.named_parameters() if "lora_" in name and p.requires_grad]  # the policy's

    def grads_of(logprobs):
        for p in params:
            p.grad = None
        (logprobs * upstream).sum().backward()
        return [p.grad.clone() for p in params]

    fused, entropy = response_logprobs(actor, rollout, 0.8, with_entropy=True)
    assert not head_calls, "the head's weight is multiplied block by block, never called on the whole batch"
    logits = forward_logits(actor, rollout)
    plain = logprobs_from_logits(logits, rollout.response_ids, 0.8)
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(entropy, entropy_from_logits(logits.detach(), 0.8), atol=1e-5, rtol=0)
    fused_grads, plain_grads = grads_of(fused), grads_of(plain)
    assert all(grad.abs().sum() > 0 for grad in plain_grads)
    for a, b in zip(fused_grads, plain_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    with roles.reference_model() as reference, torch.no_grad():
        ref_fused, _ = response_logprobs(reference, rollout, 1.0)
        ref_plain = logprobs_from_logits(forward_logits(reference, rollout), rollout.response_ids)
    torch.testing.assert_close(ref_fused, ref_plain, atol=1e-5, rtol=0)
    assert (ref_fused - fused).abs().max() > 1e-3  # the adapter was really off for the reference


def test_the_hidden_state_logprobs_opt_out_takes_the_logits_path_with_the_same_numbers(tiny_model_dir, prompts_file):
    """fast_paths.hidden_logprobs=false: no role's log-probs skip the head, and they equal the fast path's."""
    _, rollout = _rollout(tiny_model_dir, PROMPTS, response_len=6)
    results = []
    for fast in ("true", "false"):
        torch.manual_seed(0)  # the same LoRA initialisation
        roles = load_setup(make_cfg(tiny_model_dir, prompts_file, f"fast_paths.hidden_logprobs={fast}")).roles
        actor = roles.actor()
        with roles.reference_model() as reference:
            assert (plain_lm_head(actor) is None) is (plain_lm_head(reference) is None) is (fast == "false")
        head_calls = []
        actor.get_output_embeddings().register_forward_hook(lambda *_, calls=head_calls: calls.append(1))
        with torch.no_grad():
            results.append(response_logprobs(actor, rollout, 0.8, with_entropy=True))
        assert bool(head_calls) is (fast == "false")
    (fused, fused_entropy), (plain, plain_entropy) = results
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(fused_entropy, plain_entropy, atol=1e-5, rtol=0)


def test_plain_lm_head_only_where_logits_are_the_head_of_the_hidden_states(tiny_model_dir):
    """Heads that are trained, configs that cap or scale logits, and a forward that changes the logits after the
    head all keep the logits path (the numbers would differ otherwise)."""
    model = load_causal_lm(str(tiny_model_dir)).requires_grad_(False)
    assert plain_lm_head(model) is model.get_output_embeddings()
    model.get_output_embeddings().weight.requires_grad_(True)
    assert plain_lm_head(model) is None
    capped = load_causal_lm(str(tiny_model_dir)).requires_grad_(False)
    capped.config.final_logit_softcapping = 30.0
    assert plain_lm_head(capped) is None
    scaled = load_causal_lm(str(tiny_model_dir)).requires_grad_(False)
    scaled.register_forward_hook(lambda _module, _args, out: out.__setitem__("logits", out.logits * 0.5) or out)
    assert plain_lm_head(scaled) is None
    tok, rollout = _rollout(tiny_model_dir, PROMPTS)
    with torch.no_grad():  # and such a model's log-probs are the ones its own logits give
        expected = logprobs_from_logits(forward_logits(scaled, rollout), rollout.response_ids)
        torch.testing.assert_close(response_logprobs(scaled, rollout, 1.0)[0], expected, atol=0, rtol=0)


def test_tokens_after_eos_change_nothing(tiny_model_dir):
    model = load_causal_lm(str(tiny_model_dir))
    tok, rollout = _rollout(tiny_model_dir, PROMPTS, response_len=6)
    response = rollout.response_ids.clone()
    response[:, 2] = tok.eos_token_id  # every row ends at token 2
    mask = response_mask(response, tok.eos_token_id)
    a = replace(rollout, response_ids=response, response_mask=mask)
    rewritten = response.clone()
    rewritten[:, 3:] = torch.randint(2, len(tok), rewritten[:, 3:].shape)
    b = replace(a, response_ids=rewritten)
    lp_a, _ = response_logprobs(model, a, 1.0)
    lp_b, _ = response_logprobs(model, b, 1.0)
    assert torch.equal(lp_a[mask], lp_b[mask])
    adv = torch.randn(mask.shape)
    old = lp_a.detach() - 0.1
    loss_a, _ = ppo_policy_loss(lp_a, old, adv, mask)
    loss_b, _ = ppo_policy_loss(lp_b, old, adv, mask)
    assert torch.equal(loss_a, loss_b)


@pytest.mark.parametrize("granularity", ["token", "sequence"])
def test_tokens_after_eos_change_no_reward_advantage_loss_or_metric(tiny_model_dir, prompts_file, granularity):
    """DESIGN §3.4 through a whole PPO step: rewriting the tokens after each row's EOS changes no log-prob, value,
    per-token reward, GAE advantage or return, no gradient of the policy or value loss (K epochs of updates, the
    weights moving), and no step metric (the update's and the advantages' stats, the entropy, the KL, the lengths
    and the EOS rate, computed as the loop computes them)."""
    from rlhflab.algorithms.advantages import token_rewards
    from rlhflab.algorithms.ppo import value_mask
    from rlhflab.ops import kl_penalty, masked_sum
    from rlhflab.update import update

    cfg = make_cfg(tiny_model_dir, prompts_file, f"critic.granularity={granularity}", "train.micro_batch_size=2")
    setup = load_setup(cfg)
    roles, eos = setup.roles, setup.tokenizer.eos_token_id
    g = torch.Generator().manual_seed(0)
    rollout, _ = sample_rollout(roles.actor(), setup.tokenizer, PROMPTS * 2, cfg, g, setup.device)
    ids = rollout.response_ids.clone()
    for row, end in enumerate([1, 3, 2, 0, 4, 2, 3, 1]):  # every row ends, each at its own place
        ids[row, end] = eos
    mask = response_mask(ids, eos)
    after = ~mask
    rewritten = ids.clone()
    rewritten[after] = torch.randint(2, len(setup.tokenizer), (int(after.sum()),), generator=g)
    assert (rewritten[after] != eos).all() and not torch.equal(rewritten, ids)
    scores = torch.randn(8, generator=g)
    params = roles.trainable_parameters()
    with torch.no_grad():  # off the zero init: KL, values and every gradient are non-zero
        for p in params:
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    start = [p.detach().clone() for p in params]

    results = []
    for response_ids in (ids, rewritten):
        with torch.no_grad():
            for p, p0 in zip(params, start):
                p.copy_(p0)
        r = replace(rollout, response_ids=response_ids, response_mask=mask, scores=scores)
        scored, entropy = score_rollout(setup, r, cfg)
        rewards, _ = token_rewards(scored.logprobs, scored.ref_logprobs, scored.scores, mask, 0.05)
        scored, adv_stats = ppo_advantages(scored, cfg, 0.05)
        optimizer = KeepGradients(params, lr=0.5)  # the weights move: later epochs see ratios != 1
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        shuffle = torch.Generator().manual_seed(1)
        stats, _ = update(
            setup, scored, cfg, optimizer, scheduler, params, shuffle, {"total": 0, "in_a_row": 0}, kl_coef=0.05
        )
        kl = masked_sum(kl_penalty(scored.logprobs, scored.ref_logprobs, "k1"), mask, dim=1)  # (B,)
        metrics = {
            **adv_stats,
            **stats,
            "objective/entropy": entropy,
            "objective/kl": kl.mean().item(),
            "objective/rlhf_reward": (scores - 0.05 * kl).mean().item(),
            "gen/length": mask.sum(1).float().mean().item(),
            "gen/eos_rate": ((response_ids == eos) & mask).any(1).float().mean().item(),
        }
        results.append((scored, rewards, optimizer.seen, metrics))

    (a, rewards_a, grads_a, metrics_a), (b, rewards_b, grads_b, metrics_b) = results
    vmask = value_mask(a, granularity)
    for name, x, y, keep in [
        ("logprobs", a.logprobs, b.logprobs, mask),
        ("ref_logprobs", a.ref_logprobs, b.ref_logprobs, mask),
        ("values", a.values, b.values, vmask),
        ("advantages", a.advantages, b.advantages, vmask),
        ("returns", a.returns, b.returns, vmask),
    ]:
        assert torch.equal(x[keep], y[keep]), name
    assert torch.equal(rewards_a, rewards_b) and (rewards_a[mask] != 0).all() and (rewards_a[after] == 0).all()
    assert len(grads_a) == cfg.algorithm.ppo_epochs * cfg.algorithm.num_minibatches == len(grads_b)
    for update_a, update_b in zip(grads_a, grads_b):
        assert all(torch.equal(x, y) for x, y in zip(update_a, update_b))
    assert metrics_a.keys() == metrics_b.keys() and metrics_a == metrics_b
    assert metrics_a["policy/clipfrac"] > 0 and metrics_a["loss/value"] > 0 and metrics_a["val/clipfrac"] >= 0


@pytest.mark.parametrize("layout", ["shared", "separate"])
def test_step0_invariants(tiny_model_dir, prompts_file, layout):
    """LoRA B starts at zero and dropout is off: policy = reference exactly, values exactly 0."""
    # scoring passes 8 rows at once, the update 2: the rows' numbers must not depend on the rows beside them
    cfg = make_cfg(
        tiny_model_dir, prompts_file, f"model.roles={layout}", "train.micro_batch_size=2", "train.scoring_batch_size=8"
    )
    setup = load_setup(cfg)
    g = torch.Generator().manual_seed(0)
    rollout, _ = sample_rollout(setup.roles.actor(), setup.tokenizer, PROMPTS * 2, cfg, g, setup.device)
    scored, entropy = score_rollout(setup, replace(rollout, scores=torch.randn(8)), cfg)
    mask = scored.response_mask
    assert torch.equal(scored.logprobs[mask], scored.ref_logprobs[mask])  # KL = 0 exactly
    assert torch.equal(scored.values, torch.zeros_like(scored.values))
    assert entropy > 0
    fresh = torch.cat([response_logprobs(setup.roles.actor(), micro, 1.0)[0] for micro in scored.chunks(2)])
    assert torch.equal(fresh, scored.logprobs)  # ratio = 1, approx-KL = 0 exactly
    _, stats = ppo_policy_loss(fresh, scored.logprobs, torch.randn(mask.shape), mask)
    assert stats["ratio"].item() == 1.0 and stats["approxkl"].item() == 0.0 and stats["clipfrac"].item() == 0.0


def _grads(params):
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]


class KeepGradients(torch.optim.SGD):
    """SGD (lr 0 by default: no weight moves) whose ``step`` keeps a copy of the gradients it was given."""

    def __init__(self, params, lr=0.0):
        super().__init__(params, lr=lr)
        self.seen: list[list[torch.Tensor]] = []

    def step(self, closure=None):
        self.seen.append(_grads(p for group in self.param_groups for p in group["params"]))
        return super().step(closure)


@pytest.mark.parametrize("granularity", ["token", "sequence"])
@pytest.mark.parametrize("loss_agg", ["token_mean", "seq_mean", "seq_sum_constant"])
def test_micro_batch_accumulation_equals_one_big_batch(tiny_model_dir, prompts_file, granularity, loss_agg):
    """Through ``update.update`` (the normalisers it passes, its accumulation and clipping): 4 micro-batches of 2
    rows give the gradient and the loss stats of one micro-batch of 8, within 1e-6."""
    from rlhflab.update import update

    extra = [f"critic.granularity={granularity}", f"algorithm.loss_agg={loss_agg}", "algorithm.ppo_epochs=1"]
    cfg = make_cfg(tiny_model_dir, prompts_file, *extra, "algorithm.num_minibatches=1", "train.max_grad_norm=1e9")
    setup = load_setup(cfg)
    roles = setup.roles
    g = torch.Generator().manual_seed(0)
    rollout, _ = sample_rollout(roles.actor(), setup.tokenizer, PROMPTS * 2, cfg, g, setup.device)
    ids = rollout.response_ids.clone()
    for row, end in enumerate([1, 3, 5, 2, 0, 4, 5, 1]):  # unequal lengths: the normalisers matter
        ids[row, end] = setup.tokenizer.eos_token_id
    ids[2, 5] = ids[6, 5] = 7  # two rows run to the end without an EOS
    rollout = replace(rollout, response_ids=ids, response_mask=response_mask(ids, setup.tokenizer.eos_token_id))
    assert len(set(rollout.response_mask.sum(1).tolist())) == 6
    rollout, _ = score_rollout(setup, replace(rollout, scores=torch.randn(8, generator=g)), cfg)
    rollout, _ = ppo_advantages(rollout, cfg, 0.05)
    with torch.no_grad():  # move away from the zero init so every term has a gradient
        for p in roles.trainable_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    params = roles.trainable_parameters()

    def run_update(micro_size):
        cfg.train.micro_batch_size = micro_size
        optimizer = KeepGradients(params)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        shuffle = torch.Generator().manual_seed(1)
        stats, _ = update(
            setup, rollout, cfg, optimizer, scheduler, params, shuffle, {"total": 0, "in_a_row": 0}, kl_coef=0.05
        )
        assert len(optimizer.seen) == 1
        return optimizer.seen[0], stats

    (big, big_stats), (small, small_stats) = run_update(8), run_update(2)
    assert all(b.abs().sum() > 0 for b in big), "every LoRA weight of both adapters and the head gets a gradient"
    for b, s in zip(big, small):
        torch.testing.assert_close(s, b, atol=1e-6, rtol=0)
    assert big_stats.keys() == small_stats.keys()
    for key in big_stats:
        assert small_stats[key] == pytest.approx(big_stats[key], abs=1e-6), key


def test_scoring_rows_per_pass_change_no_number(tiny_model_dir, prompts_file):
    """train.scoring_batch_size (rows per pass; 3 is rounded down to 2, a whole micro-batch) and rows_at_once (rows
    per log-softmax) are speed knobs only."""
    results = []
    for size in (2, 3, 8):
        cfg = make_cfg(tiny_model_dir, prompts_file, "train.micro_batch_size=2", f"train.scoring_batch_size={size}")
        setup = load_setup(cfg)
        g = torch.Generator().manual_seed(0)
        rollout, _ = sample_rollout(setup.roles.actor(), setup.tokenizer, PROMPTS * 2, cfg, g, setup.device)
        results.append(score_rollout(setup, replace(rollout, scores=torch.randn(8)), cfg))
    (first, first_entropy), *others = results
    for scored, entropy in others:
        for field in ("response_ids", "logprobs", "ref_logprobs", "values"):
            assert torch.equal(getattr(scored, field), getattr(first, field)), field
        assert entropy == pytest.approx(first_entropy, rel=1e-6)  # a sum over chunks, so up to rounding
    model = load_setup(make_cfg(tiny_model_dir, prompts_file)).roles.actor()
    whole, whole_entropy = response_logprobs(model, first, 1.3, with_entropy=True)
    parts, parts_entropy = response_logprobs(model, first, 1.3, with_entropy=True, rows_at_once=3)
    assert torch.equal(whole, parts) and torch.equal(whole_entropy, parts_entropy)


def test_compiled_blocks_give_the_same_numbers(tiny_model_dir, prompts_file):
    """train.compile: the scoring passes and a PPO micro-step's gradients through compiled blocks equal eager ones
    (to the fused kernels' rounding); generation stays eager, so both sample the same rollout."""
    from torch._dynamo.utils import counters

    results = []
    for on in (False, True):
        counters.clear()
        cfg = make_cfg(tiny_model_dir, prompts_file, f"train.compile={on}")
        torch.manual_seed(0)  # the same LoRA initialisation both times
        setup = load_setup(cfg)
        g = torch.Generator().manual_seed(0)
        rollout, _ = sample_rollout(setup.roles.actor(), setup.tokenizer, PROMPTS * 2, cfg, g, setup.device)
        params = setup.roles.trainable_parameters()
        with torch.no_grad():
            for p in params:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        rollout, _ = score_rollout(setup, replace(rollout, scores=torch.randn(8, generator=g)), cfg)
        rollout, _ = ppo_advantages(rollout, cfg, 0.05)
        ppo_micro_step(setup.roles, rollout, cfg, rollout.response_mask.sum(), len(rollout), 0.05)
        results.append((rollout, _grads(params), counters["stats"]["unique_graphs"]))
    (eager, eager_grads, eager_graphs), (compiled, compiled_grads, graphs) = results
    assert eager_graphs == 0 and graphs >= 3  # policy, reference and critic passes, with and without gradients
    assert torch.equal(compiled.response_ids, eager.response_ids)
    for field in ("logprobs", "ref_logprobs", "values"):
        torch.testing.assert_close(getattr(compiled, field), getattr(eager, field), atol=1e-5, rtol=0)
    assert all(g.abs().sum() > 0 for g in eager_grads)
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_compile_without_a_cpp_compiler_is_a_clear_error(tiny_model_dir, prompts_file, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler")
    with pytest.raises(UserError, match="train.compile: torch.compile needs a C.. compiler on a CPU"):
        load_setup(make_cfg(tiny_model_dir, prompts_file, "train.compile=true"))


def _rollout_and_moved_weights(setup, cfg):
    """A scored PPO rollout (random scores) and the trainable weights, moved off their zero initialisation so that
    every one of them gets a gradient; the same every time for the same setup."""
    g = torch.Generator().manual_seed(0)
    rollout, _ = sample_rollout(setup.roles.actor(), setup.tokenizer, PROMPTS * 2, cfg, g, setup.device)
    rollout, _ = score_rollout(setup, replace(rollout, scores=torch.randn(8, generator=g)), cfg)
    rollout, _ = ppo_advantages(rollout, cfg, 0.05)
    params = setup.roles.trainable_parameters()
    with torch.no_grad():
        for p in params:
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return rollout, params


@pytest.mark.parametrize("layout", ["shared", "separate"])
def test_activation_checkpointing_gives_the_same_gradients(tiny_model_dir, prompts_file, layout, monkeypatch):
    """train.activation_checkpointing recomputes in backward: the same gradients, fewer tensors saved outside the
    recomputed blocks; ``selective`` asks its policy about every operator of every block."""
    import rlhflab.models.loading as loading

    asked = []

    def recording_policy(ctx, op, *args, **kwargs):
        asked.append(op)
        return keep_products(ctx, op, *args, **kwargs)

    monkeypatch.setattr(loading, "keep_products", recording_policy)
    grads, saved = [], []
    for mode in ("none", "full", "selective"):
        cfg = make_cfg(tiny_model_dir, prompts_file, f"model.roles={layout}", f"train.activation_checkpointing={mode}")
        torch.manual_seed(0)  # the same LoRA initialisation every time
        setup = load_setup(cfg)
        rollout, params = _rollout_and_moved_weights(setup, cfg)
        count = [0]

        def pack(t, count=count):
            count[0] += t.numel()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            ppo_micro_step(setup.roles, rollout, cfg, rollout.response_mask.sum(), len(rollout), 0.05)
        grads.append(_grads(params))
        saved.append(count[0])
    assert all(g.abs().sum() > 0 for g in grads[0])
    for plain, full, selective in zip(*grads):
        torch.testing.assert_close(full, plain, atol=1e-6, rtol=0)
        torch.testing.assert_close(selective, plain, atol=1e-6, rtol=0)
    assert saved[1] < 0.5 * saved[0] and saved[2] < 0.5 * saved[0], saved  # what stays alive outside the blocks
    assert torch.ops.aten.mm.default in asked and torch.ops.aten.native_layer_norm.default in asked


@pytest.mark.parametrize("layout", ["shared", "separate"])
def test_roles_add_lora_in_place_with_the_same_gradients_except_under_selective_checkpointing(
    tiny_model_dir, prompts_file, layout, monkeypatch
):
    """A PPO micro-step's gradients (policy and critic adapters, value head) equal peft's forward bit for bit with
    no and with full checkpointing. ``selective`` keeps the base products' outputs (lowered here so the tiny model's
    are kept too), which an in-place add would overwrite, so it keeps peft's forward."""
    import rlhflab.models.loading as loading

    monkeypatch.setattr(loading, "MIN_KEPT_INNER_DIM", 8)
    for mode in ("none", "full", "selective"):
        grads, installed = [], []
        for in_place in (False, True):
            cfg = make_cfg(
                tiny_model_dir,
                prompts_file,
                f"model.roles={layout}",
                f"train.activation_checkpointing={mode}",
                f"fast_paths.lora_in_place={str(in_place).lower()}",
            )
            torch.manual_seed(0)  # the same LoRA initialisation every time
            setup = load_setup(cfg)
            layers = [m for r in setup.roles.models() for m in r.modules() if type(m) is LoraLinear]
            installed.append(sum("forward" in vars(m) for m in layers) / len(layers))
            rollout, params = _rollout_and_moved_weights(setup, cfg)
            ppo_micro_step(setup.roles, rollout, cfg, rollout.response_mask.sum(), len(rollout), 0.05)
            grads.append(_grads(params))
        assert installed == [0.0, 0.0 if mode == "selective" else 1.0], (mode, installed)
        assert all(g.abs().sum() > 0 for g in grads[0])
        for peft_grad, in_place_grad in zip(*grads):
            assert torch.equal(in_place_grad, peft_grad), mode


def test_selective_checkpointing_keeps_products_and_attention_and_recomputes_the_rest():
    """Kept: outputs of products over an inner dimension > 64 (2·K FLOPs spared per kept float) and of attention.
    Recomputed: LoRA's rank-r up-projection, norms, activation functions, element-wise arithmetic."""
    must, recompute = CheckpointPolicy.MUST_SAVE, CheckpointPolicy.PREFER_RECOMPUTE
    aten = torch.ops.aten
    x, lora_a_out = torch.zeros(6, 128), torch.zeros(6, 16)
    assert keep_products(None, aten.mm.default, x, torch.zeros(128, 384)) == must  # a model projection
    assert keep_products(None, aten.addmm.default, torch.zeros(384), x, torch.zeros(128, 384)) == must
    assert keep_products(None, aten.mm.default, x, torch.zeros(128, 16)) == must  # LoRA A: K = 128
    assert keep_products(None, aten.mm.default, lora_a_out, torch.zeros(16, 384)) == recompute  # LoRA B: K = r
    assert keep_products(None, aten.bmm.default, torch.zeros(2, 6, 64), torch.zeros(2, 64, 6)) == recompute
    assert keep_products(None, aten.bmm.default, torch.zeros(2, 6, 65), torch.zeros(2, 65, 6)) == must
    assert keep_products(None, aten._scaled_dot_product_flash_attention_for_cpu.default) == must
    for op in (aten.native_layer_norm.default, aten.gelu.default, aten.mul.Tensor, aten.cat.default):
        assert keep_products(None, op) == recompute


def test_reserved_kv_cache_samples_what_the_default_cache_samples(tiny_model_dir, prompts_file):
    """fastpaths.kv_cache reserves each layer's room up front; tokens and logprobs stay exactly the same."""
    from rlhflab import fastpaths

    cfg = make_cfg(tiny_model_dir, prompts_file, "rollout.max_new_tokens=12")
    setup = load_setup(cfg)
    runs, reserved = [], fastpaths.kv_cache
    for reserved_cache in (True, False):  # fast_paths.reserved_kv_cache: false = transformers' DynamicCache
        ids, mask = tokenize_prompts(setup.tokenizer, PROMPTS * 2, 32, setup.device)
        g = torch.Generator().manual_seed(3)
        eos = setup.tokenizer.eos_token_id
        runs.append(generate(setup.roles.actor(), ids, mask, 12, eos, 1, g, reserved_cache=reserved_cache))
    (tokens, logprobs), (plain_tokens, plain_logprobs) = runs
    assert tokens.shape[1] > 1
    assert torch.equal(tokens, plain_tokens) and torch.equal(logprobs, plain_logprobs)
    cache = reserved(5)
    if fastpaths.DynamicLayer is not None:  # transformers 5
        keys = torch.randn(2, 3, 4, 8)
        cache.update(keys, -keys, 0)
        k, v = cache.update(keys[:, :, :1], keys[:, :, :1], 0)
        assert torch.equal(k, torch.cat([keys, keys[:, :, :1]], dim=2)) and cache.get_seq_length() == 5
        with pytest.raises(AssertionError, match="reserved 5"):
            cache.update(keys[:, :, :1], keys[:, :, :1], 0)


def test_inverse_cdf_sampler_follows_the_distribution_and_never_draws_a_zero():
    """Frequencies of 40,000 draws match the probabilities (within 5 standard errors); tokens of probability 0
    (masked by top-k, or at the ends of the vocabulary) are never drawn; the same seed draws the same tokens."""
    from rlhflab.rollout import sample_categorical

    probs = torch.tensor(
        [[0.0, 0.5, 0.0, 0.3, 0.2, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 1.0], [0.1, 0.1, 0.2, 0.2, 0.4, 0.0]]
    )
    n = 40_000
    draws = sample_categorical(probs.repeat(n, 1), torch.Generator().manual_seed(0)).view(n, 3)  # (n, 3)
    for row in range(3):
        freq = torch.bincount(draws[:, row], minlength=6).double() / n
        stderr = (probs[row].double() * (1 - probs[row].double()) / n).sqrt()
        assert torch.all((freq - probs[row].double()).abs() <= 5 * stderr + 1e-12), (row, freq, probs[row])
        assert torch.all(freq[probs[row] == 0] == 0)
    again = sample_categorical(probs.repeat(n, 1), torch.Generator().manual_seed(0)).view(n, 3)
    assert torch.equal(draws, again)


def test_inverse_cdf_maps_each_uniform_to_the_token_whose_interval_holds_it():
    """Hand values: cdf = [0.25, 0.5, 1.0, 1.0]; u in [cdf[i-1], cdf[i]) gives token i; a zero-probability token
    (the last) is never the answer, not even for u that rounded up to the total."""
    from rlhflab.rollout import invert_cdf

    probs = torch.tensor([[0.25, 0.25, 0.5, 0.0]]).repeat(6, 1)
    u = torch.tensor([[0.0], [0.2499], [0.25], [0.4999], [0.74], [1.0]])
    assert invert_cdf(probs, u).tolist() == [0, 0, 1, 1, 2, 2]
    unnormalised = probs * 3  # the search scales u by the row's total
    assert invert_cdf(unnormalised, u).tolist() == [0, 0, 1, 1, 2, 2]
