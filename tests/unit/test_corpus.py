"""The synthetic review corpus: deterministic, varied, VADER-scorable, with held-out evaluation openings."""

import json
import re
import statistics
from collections import Counter

import pytest
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from rlhflab.data import corpus
from rlhflab.data.corpus import (
    EVAL_OPENINGS,
    SENTIMENTS,
    Review,
    generate_reviews,
    load_reviews,
    save_reviews,
    training_prompts,
)


@pytest.fixture(scope="module")
def reviews():
    return generate_reviews()


@pytest.fixture(scope="module")
def vader():
    return SentimentIntensityAnalyzer()


def test_same_seed_same_reviews_other_seed_other_reviews():
    assert generate_reviews(300, seed=0) == generate_reviews(300, seed=0)
    other = generate_reviews(300, seed=1)
    assert other != generate_reviews(300, seed=0)
    assert len({r.text for r in other} & {r.text for r in generate_reviews(300, seed=0)}) < 30


def test_stream_is_sequential_so_a_longer_call_adds_held_out_reviews():
    assert generate_reviews(150, seed=3)[:100] == generate_reviews(100, seed=3)


def test_default_corpus_is_thousands_of_distinct_reviews_of_every_sentiment(reviews):
    assert len(reviews) == 6000
    assert len({r.text for r in reviews}) == 6000
    counts = Counter(r.sentiment for r in reviews)
    assert set(counts) == set(SENTIMENTS)
    assert min(counts.values()) > 600
    # positive and negative reviews are balanced
    assert abs(counts["positive"] - counts["negative"]) < 0.1 * counts["positive"]


def test_lengths_and_sentences(reviews):
    words = [len(r.text.split()) for r in reviews]
    assert min(words) >= corpus.MIN_WORDS and max(words) <= corpus.MAX_WORDS
    sentences = Counter(len(re.findall(r"[.!?](?= |$)", r.text)) for r in reviews)
    assert set(sentences) <= {1, 2, 3, 4} and {2, 3, 4} <= set(sentences)
    assert all(r.text[0].isupper() and r.text.endswith(".") for r in reviews)
    assert not any(re.search(r"\b[Aa] [aeiou]", r.text) for r in reviews)  # "an amazing", never "a amazing"
    openings = Counter(" ".join(r.text.split()[:2]) for r in reviews)
    assert len(openings) > 50  # varied openings


def test_sentiment_words_are_vader_words_with_the_right_sign(vader):
    lexicon = vader.lexicon
    assert all(lexicon.get(w, 0) >= 1.3 for w in corpus._POS_ADJ)
    assert all(lexicon.get(w, 0) <= -1.1 for w in corpus._NEG_ADJ)
    neutral = " ".join(
        corpus._TITLE_ADJ
        + corpus._TITLE_NOUN
        + corpus._GENRES
        + corpus._ROLES
        + corpus._ACTIONS
        + corpus._PLACES
        + corpus._NEUTRAL
        + corpus._OPEN_NEUTRAL
    ).lower()
    assert not [w for w in re.findall(r"[a-z]+", neutral) if w in lexicon]


def test_vader_agrees_with_the_labels_and_the_corpus_is_balanced(reviews, vader):
    scores = {s: [] for s in SENTIMENTS}
    for r in reviews[:1500]:
        scores[r.sentiment].append(vader.polarity_scores(r.text)["compound"])
    assert statistics.mean(scores["positive"]) > 0.6
    assert statistics.mean(scores["negative"]) < -0.4
    assert abs(statistics.mean(scores["neutral"])) < 0.15
    assert abs(statistics.mean(scores["mixed"])) < 0.25
    everything = [x for v in scores.values() for x in v]
    assert abs(statistics.mean(everything)) < 0.2  # the SFT model will write mixed sentiment


def test_eval_openings_are_held_out(reviews):
    assert len(EVAL_OPENINGS) >= 16 and len(set(EVAL_OPENINGS)) == len(EVAL_OPENINGS)
    assert {
        "The movie was",
        "This is the worst",
        "I really hated this film because",
        "Honestly, the acting was",
    } <= set(EVAL_OPENINGS)
    assert not any(r.text.startswith(EVAL_OPENINGS) for r in reviews)
    # ... but the model can continue them: every word occurs in the corpus
    vocab = {w.strip(".,").lower() for r in reviews for w in r.text.split()}
    for opening in EVAL_OPENINGS:
        assert {w.strip(",").lower() for w in opening.split()} <= vocab, opening


def test_several_eval_openings_are_negative(vader):
    negative = [o for o in EVAL_OPENINGS if vader.polarity_scores(o)["compound"] < -0.05]
    assert len(negative) >= 4


def test_training_prompts(reviews):
    prompts = training_prompts(reviews, seed=0, n=1000)
    assert len(prompts) == 1000 and len(set(prompts)) == 1000
    assert prompts == training_prompts(reviews, seed=0, n=1000)
    assert prompts != training_prompts(reviews, seed=1, n=1000)
    assert not set(prompts) & set(EVAL_OPENINGS)
    for p in prompts:
        assert 2 <= len(p.split()) <= 6
        assert not any(o.startswith(p) or p.startswith(o) for o in EVAL_OPENINGS), p
    texts = {r.text for r in reviews}
    assert all(any(t.startswith(p + " ") for t in texts) for p in prompts[:50])


def test_save_and_load_reviews(tmp_path):
    rows = [Review("A fine test review.", "positive"), Review('Quotes " and ünïcode.', "neutral")]
    save_reviews(tmp_path / "r.jsonl", rows)
    assert load_reviews(tmp_path / "r.jsonl") == rows


def test_demo_data_is_written_once_and_matches_the_demo_model_build(tmp_path):
    """ensure_demo_data writes the corpus and prompts that the demo model's build writes (same seed, same sizes),
    and a second call reuses the folder."""
    from rlhflab.data.demo import N_HELDOUT, N_REVIEWS, ensure_demo_data, write_demo_data

    data = ensure_demo_data(tmp_path / "home", seed=0)
    rows = [json.loads(line) for line in data.corpus_file.read_text().splitlines()]
    assert [r["split"] for r in rows].count("train") == N_REVIEWS and len(rows) == N_REVIEWS + N_HELDOUT
    assert data.eval_prompts_file.read_text().splitlines() == list(EVAL_OPENINGS)
    stamp = data.corpus_file.stat().st_mtime_ns
    assert ensure_demo_data(tmp_path / "home", seed=0).corpus_file.stat().st_mtime_ns == stamp  # reused
    (tmp_path / "again").mkdir()
    write_demo_data(tmp_path / "again", seed=0)  # what models.tiny's build calls with the default DemoSpec
    for name in ("corpus.jsonl", "train_prompts.txt", "eval_prompts.txt"):
        assert (tmp_path / "again" / name).read_bytes() == (data.corpus_file.parent / name).read_bytes()
