import pytest
import torch
from conftest import CLASSIFIER_TEXTS as TEXTS
from conftest import build_classifier
from transformers import DistilBertForSequenceClassification, PreTrainedTokenizerFast

from rlhflab.config import RewardComponent, RewardConfig
from rlhflab.errors import UserError
from rlhflab.rewards import build_reward
from rlhflab.rewards.base import load_callable
from rlhflab.rewards.classifier import ClassifierReward, find_label
from rlhflab.rewards.lexicon import VaderReward
from rlhflab.rewards.shaping import repetition, short


def test_vader_signs_and_a_known_value():
    good, bad, neutral = VaderReward()(TEXTS)
    assert good > 0.05 and bad < -0.05 and abs(neutral) <= 0.05
    assert VaderReward()(["good"]) == [pytest.approx(0.4404, abs=1e-4)]  # VADER's published compound for 'good'


def test_shaping_terms_on_hand_written_strings():
    assert repetition(["a a b", "x y z w", "", "good good good good"]) == [2 / 3, 1.0, 0.0, 0.25]
    assert short(["one two three four", "one two three four five", ""]) == [-1.0, 0.0, -1.0]
    assert short(["one two"], min_words=2) == [0.0]


def _spec(**kw):
    return RewardComponent(**{"name": "c", **kw})


def test_weighted_sum_and_components():
    cfg = RewardConfig(
        components=[_spec(name="rep", kind="repetition", weight=0.5), _spec(name="short", kind="short", weight=2.0)]
    )
    scores, parts = build_reward(cfg)(["p", "p"], ["a a b", "one two three four five six"])
    assert torch.allclose(parts["rep"], torch.tensor([2 / 3, 1.0]))
    assert torch.allclose(parts["short"], torch.tensor([-1.0, 0.0]))
    assert torch.allclose(scores, torch.tensor([0.5 * 2 / 3 - 2.0, 0.5]))


def test_cap_limits_a_component_in_the_score_not_in_its_log():
    # rewards 0.9, 0.2, -0.5 (reward_fns:fixed_scores); cap 0.5, weight 2: the score counts min(raw, 0.5) twice,
    # reward/<name> keeps the judge's own values
    cfg = RewardConfig(
        components=[_spec(name="f", kind="callable", function="reward_fns:fixed_scores", weight=2.0, cap=0.5)]
    )
    scores, parts = build_reward(cfg)(["p"] * 3, ["x", "y", "z"])
    assert scores.tolist() == pytest.approx([1.0, 0.4, -1.0])
    assert parts["f"].tolist() == pytest.approx([0.9, 0.2, -0.5])
    uncapped, _ = build_reward(
        RewardConfig(components=[_spec(name="f", kind="callable", function="reward_fns:fixed_scores")])
    )(["p"] * 3, ["x", "y", "z"])
    assert uncapped.tolist() == pytest.approx([0.9, 0.2, -0.5])


def test_callables_and_inputs():
    cfg = RewardConfig(components=[_spec(name="len", kind="callable", function="reward_fns:prompt_echo")])
    scores, _ = build_reward(cfg)(["ab", "abcd"], ["x", "y"])
    assert scores.tolist() == [2.0, 4.0]
    with pytest.raises(UserError, match="cannot import 'no_such_module:f'"):
        load_callable("no_such_module:f", "k")
    with pytest.raises(UserError, match="cannot import 'reward_fns:missing'"):
        load_callable("reward_fns:missing", "k")


def test_non_finite_score_names_the_sample():
    cfg = RewardConfig(components=[_spec(name="bad", kind="callable", function="reward_fns:nan_reward")])
    with pytest.raises(UserError, match="'bad' returned nan for sample 1: prompt='q'"):
        build_reward(cfg)(["p", "q"], ["x", "y"])


def test_lexicon_on_prompt_plus_completion():
    only = build_reward(RewardConfig(components=[_spec(kind="lexicon", input="completion")]))
    both = build_reward(RewardConfig(components=[_spec(kind="lexicon", input="prompt_completion")]))
    prompts, completions = ["I hated this awful film. "], ["It was a film."]
    assert only(prompts, completions)[0].item() == 0.0
    assert both(prompts, completions)[0].item() < -0.05


# ------------------------------------------------------------------------------------------------ classifier


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    return build_classifier(tmp_path_factory.mktemp("clf"), {0: "NEGATIVE", 1: "POSITIVE"})


def manual_logits(path, texts):
    tok = PreTrainedTokenizerFast.from_pretrained(path)
    model = DistilBertForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        return model(**tok(texts, return_tensors="pt", padding=True)).logits


def test_classifier_logit_and_probability(classifier_dir):
    expected = manual_logits(classifier_dir, TEXTS)
    logit = ClassifierReward(str(classifier_dir), "POSITIVE", "logit", "cpu", batch_size=2)(TEXTS)
    prob = ClassifierReward(str(classifier_dir), "positive", "probability", "cpu")(TEXTS)
    torch.testing.assert_close(torch.tensor(logit), expected[:, 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(prob), expected.softmax(-1)[:, 1], atol=1e-5, rtol=0)


def test_label_is_found_by_name_not_index(tmp_path):
    swapped = build_classifier(tmp_path / "swapped", {0: "POSITIVE", 1: "NEGATIVE"})
    expected = manual_logits(swapped, TEXTS)
    got = ClassifierReward(str(swapped), "POSITIVE", device="cpu")(TEXTS)
    torch.testing.assert_close(torch.tensor(got), expected[:, 0], atol=1e-5, rtol=0)


def test_missing_label_lists_the_labels(classifier_dir):
    with pytest.raises(UserError, match="no label 'JOY'; its labels are 0=NEGATIVE, 1=POSITIVE"):
        ClassifierReward(str(classifier_dir), "JOY", device="cpu")
    with pytest.raises(UserError, match="no label"):
        find_label({"0": "LABEL_0", "1": "LABEL_1"}, "POSITIVE", "k")


def test_classifier_truncates_long_texts_and_judges_prompt_plus_completion(classifier_dir):
    judge = ClassifierReward(str(classifier_dir), device="cpu")
    assert len(judge(["great " * 500])) == 1  # longer than 64 positions: truncated, not an error
    spec = _spec(kind="classifier", model=str(classifier_dir), input="prompt_completion", device="cpu")
    scores, _ = build_reward(RewardConfig(components=[spec]))(["awful and boring, "], ["the worst plot"])
    assert scores.item() == pytest.approx(judge(["awful and boring, the worst plot"])[0], abs=1e-5)


def test_distilbert_imdb_config_shape(shared_assets, tmp_path):
    """The published classifier's config (id2label 0 = NEGATIVE, 1 = POSITIVE) picks index 1 by name."""
    path = build_classifier(tmp_path / "imdb", None, shared_assets / "distilbert-imdb" / "config.json")
    judge = ClassifierReward(str(path), "POSITIVE", device="cpu")
    assert judge.index == 1
    torch.testing.assert_close(torch.tensor(judge(TEXTS)), manual_logits(path, TEXTS)[:, 1], atol=1e-5, rtol=0)


def test_naive_bayes_second_judge_hand_values(tmp_path):
    from rlhflab.rewards.bayes import NaiveBayesSentiment

    # positive docs: "good good", "good fun"; negative: "bad", "bad fun". vocab {good, fun, bad}, |V| = 3
    judge = NaiveBayesSentiment(
        ["good good", "good fun", "bad", "bad fun"], ["positive", "positive", "negative", "negative"]
    )
    # totals: pos 4 words + 3 = 7, neg 3 words + 3 = 6; llr(good) = log(4/7) − log(1/6); prior log(2/2) = 0
    import math

    assert judge(["good"]) == [pytest.approx(math.log(4 / 7) - math.log(1 / 6))]
    assert judge(["fun"]) == [pytest.approx(math.log(2 / 7) - math.log(2 / 6))]
    assert judge(["unseen words"]) == [0.0]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(
        '{"text": "good", "sentiment": "positive"}\n{"text": "bad", "sentiment": "negative"}\n'
        '{"text": "bad bad", "sentiment": "positive", "split": "heldout"}\n'
    )
    fitted = NaiveBayesSentiment.from_jsonl(corpus)
    assert fitted(["good"])[0] > 0 > fitted(["bad"])[0]  # the held-out row is not used for fitting
    with pytest.raises(UserError, match="does not exist"):
        NaiveBayesSentiment.from_jsonl(tmp_path / "none.jsonl")
