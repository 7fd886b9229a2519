"""Evaluation: positive share from each judge's own verdict, and enough held-out completions in the presets."""

import sys
import types

import pytest
from conftest import build_classifier

from rlhflab.config import RewardComponent, build_config


def test_each_judge_component_has_its_own_verdict_and_shaping_terms_have_none(tmp_path):
    """VADER compound > 0.05, a classifier's label probability > 0.5 (whatever its training output), naive Bayes
    log-odds > 0; repetition, short and callables are no judges."""
    from rlhflab.evaluate import judge_verdicts

    clf = build_classifier(tmp_path / "clf", {0: "NEGATIVE", 1: "POSITIVE"})
    components = [
        RewardComponent(name="vader", kind="lexicon"),
        RewardComponent(name="repetition", kind="repetition", weight=0.5),
        RewardComponent(name="sentiment", kind="classifier", model=str(clf), output="logit", device="cpu"),
        RewardComponent(name="fn", kind="callable", function="reward_fns:length_reward"),
    ]
    verdicts = judge_verdicts(components)
    assert [(name, threshold) for name, _, threshold in verdicts] == [("vader", 0.05), ("sentiment", 0.5)]
    texts = ["a wonderful film with great acting", "awful and boring, the worst plot", "it was a film"]
    probabilities = verdicts[1][1](["" for _ in texts], texts)
    assert all(0 < p < 1 for p in probabilities)  # probabilities, not logits
    assert verdicts[0][1](["", ""], ["great, wonderful", "it was a film"]) == pytest.approx([0.8316, 0.0], abs=1e-4)


def test_positive_share_is_the_first_judges_verdict_not_the_composite_score():
    """The imdb-like reward (VADER + 0.5 · repetition): a neutral text scores +0.5 (its repetition term), so the
    composite score > 0.05 calls 3 of 4 texts positive; VADER's verdict calls 1 of 4 positive."""
    from rlhflab.evaluate import judge_verdicts, verdict_shares

    components = [
        RewardComponent(name="vader", kind="lexicon"),
        RewardComponent(name="repetition", kind="repetition", weight=0.5),
    ]
    rows = [
        {"prompt": "", "completion": text}
        for text in ["it was a film", "a wonderful film", "this is bad and the plot is awful", "it was a film"]
    ]
    shares = verdict_shares(judge_verdicts(components), rows)
    assert shares == {"positive_share/vader": 0.25}


def fake_imdb(monkeypatch):
    def load_dataset(name, split):
        part, _, size = split.partition("[:")
        return [{"text": f"{part} review number {i} was a film of some kind"} for i in range(int(size.rstrip("]")))]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))


@pytest.mark.parametrize("algo", ["ppo", "rloo", "grpo"])
def test_imdb_presets_evaluate_at_least_64_held_out_completions(monkeypatch, algo):
    """Before: 4 prompts × 1 sample. Now the 4 published openings + IMDB test-split openings, none a training prompt."""
    from rlhflab.session import held_out_prompts

    fake_imdb(monkeypatch)
    cfg = build_config(preset=f"imdb-pythia-410m-{algo}")
    train_prompts = [f"train review number {i} was a film of" for i in range(300)]
    prompts = held_out_prompts(cfg, train_prompts, None)[: cfg.eval.max_prompts]
    assert len(prompts) * cfg.eval.samples_per_prompt >= 64
    assert prompts[:4] == cfg.eval.prompts and not set(prompts) & set(train_prompts)


def test_a_prompt_listed_in_eval_prompts_and_the_eval_file_is_evaluated_once(tmp_path):
    """The smollm2 presets list the published openings, which the demo's held-out file holds too."""
    from rlhflab.data.corpus import EVAL_OPENINGS
    from rlhflab.session import held_out_prompts

    eval_file = tmp_path / "eval.txt"
    eval_file.write_text("\n".join(EVAL_OPENINGS) + "\n")
    cfg = build_config(preset="smollm2-grpo")
    prompts = held_out_prompts(cfg, ["a training prompt"], str(eval_file))
    assert prompts[:4] == cfg.eval.prompts and sorted(prompts) == sorted(EVAL_OPENINGS)


def test_held_out_kl_is_zero_at_the_start_and_the_summed_k1_of_each_completion_by_hand(tiny_model_dir, prompts_file):
    """summary["kl"] (and each row's "kl"): Σ_t (log π − log π_ref) at the sampling temperature over the completion's
    own tokens, averaged; 0 while LoRA's B is 0 (the policy is the reference) and 0 on the reference side."""
    import torch

    from rlhflab.evaluate import sample_and_judge
    from rlhflab.rollout import sample_rollout
    from rlhflab.session import load_setup

    sets = [f"model.name={tiny_model_dir}", "model.device=cpu", "data.source=file", f"data.prompts_file={prompts_file}"]
    sets += ["eval.judges=[]", "rollout.temperature=0.7", "rollout.max_new_tokens=6", "eval.samples_per_prompt=3"]
    cfg = build_config(preset="demo-ppo", overrides=sets)
    setup = load_setup(cfg, with_critic=False)
    roles, prompts = setup.roles, ["the movie was"]
    _, start = sample_and_judge(setup, cfg, setup.reward, prompts, use_reference=False, seed=5)
    assert abs(start["kl"]) < 1e-5  # LoRA B = 0: the policy is the reference
    with torch.no_grad():
        for name, param in roles.policy.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    rows, moved = sample_and_judge(setup, cfg, setup.reward, prompts, use_reference=False, seed=5)
    _, reference_side = sample_and_judge(setup, cfg, setup.reward, prompts, use_reference=True, seed=5)
    assert reference_side["kl"] == 0.0

    with torch.no_grad():  # the same completions again (same seed), their log-ratio by hand
        rollout, completions = sample_rollout(
            roles.actor(), setup.codec, prompts * 3, cfg, torch.Generator().manual_seed(5), setup.device
        )
        assert completions == [r["completion"] for r in rows]
        ids = torch.cat([rollout.prompt_ids, rollout.response_ids], 1)  # (3, P + T), one prompt: no left padding
        p, mask = rollout.prompt_ids.shape[1], rollout.response_mask

        def summed_logprobs(model):  # full-vocabulary log-softmax of the logits at temperature 0.7
            logits = model(input_ids=ids).logits[:, p - 1 : -1].float() / 0.7  # (3, T, V)
            taken = torch.log_softmax(logits, -1).gather(-1, rollout.response_ids[..., None])[..., 0]  # (3, T)
            return (taken * mask).sum(1)

        expected = summed_logprobs(roles.actor())
        with roles.reference_model() as reference:
            expected = expected - summed_logprobs(reference)  # (3,)
    assert expected.abs().max() > 1e-3  # the policy moved
    assert [r["kl"] for r in rows] == pytest.approx(expected.tolist(), abs=1e-4)
    assert moved["kl"] == pytest.approx(expected.mean().item(), abs=1e-4)


def test_listed_prompts_get_their_own_number_of_samples(tiny_model_dir, prompts_file):
    """eval.samples_per_listed_prompt: each of eval.prompts (the openings a table is judged on) is sampled that many
    times, every other held-out prompt eval.samples_per_prompt times; 0 leaves every prompt at samples_per_prompt."""
    from collections import Counter

    from rlhflab.evaluate import sample_and_judge
    from rlhflab.session import load_setup

    sets = [f"model.name={tiny_model_dir}", "model.device=cpu", "data.source=file", f"data.prompts_file={prompts_file}"]
    sets += ["eval.judges=[]", "rollout.max_new_tokens=3", "eval.samples_per_prompt=2", "eval.batch_size=4"]
    sets += ["eval.prompts=[the movie was]", "eval.samples_per_listed_prompt=5"]
    cfg = build_config(preset="demo-ppo", overrides=sets)
    setup = load_setup(cfg, with_critic=False)
    prompts = ["the movie was", "i watched it"]
    rows, summary = sample_and_judge(setup, cfg, setup.reward, prompts, use_reference=True, seed=5)
    assert Counter(r["prompt"] for r in rows) == {"the movie was": 5, "i watched it": 2}
    assert summary["num_samples"] == 7

    cfg = build_config(preset="demo-ppo", overrides=[*sets[:-1], "eval.samples_per_listed_prompt=0"])
    rows, _ = sample_and_judge(setup, cfg, setup.reward, prompts, use_reference=True, seed=5)
    assert Counter(r["prompt"] for r in rows) == {"the movie was": 2, "i watched it": 2}


def test_the_printed_table_shows_a_few_samples_of_each_prompt():
    """208 held-out completions made a 624-line table on the terminal: it shows each prompt's first samples and
    says where the rest are."""
    from rlhflab.evaluate import format_table

    def rows(prompt, n, score):
        return [{"prompt": prompt, "completion": f" sample {i}", "score": score} for i in range(n)]

    before = rows("This is the worst", 20, -0.5) + rows("The cast is", 8, 0.1)
    after = rows("This is the worst", 20, 0.9) + rows("The cast is", 8, 0.8)
    table = format_table(before, after, samples_per_prompt=2)
    assert table.count("This is the worst") == 2 and table.count("The cast is") == 2
    assert table.count("    before:") == 4 and table.count("    after:") == 4
    assert "sample 1" in table and "sample 2" not in table
    assert "2 of 20 samples per prompt" in table
    # few enough samples: all shown, no note
    assert "samples per prompt" not in format_table(before[:2], after[:2], samples_per_prompt=2)
