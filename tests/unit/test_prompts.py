"""Prompt files: text, JSONL and CSV give the same prompts; a malformed file is a one-line error naming it."""

import json

import pytest

from rlhflab.data.prompts import read_prompts
from rlhflab.errors import UserError

PROMPTS = ["The movie was", 'She said "wow", then', "I really hated this film because"]


def test_text_jsonl_and_csv_give_the_same_prompts(tmp_path):
    (tmp_path / "p.txt").write_text("\n".join(PROMPTS[:1] + ["", "   "] + PROMPTS[1:]) + "\n")  # blank lines skipped
    (tmp_path / "p.jsonl").write_text(
        "\n".join(
            [
                json.dumps({"prompt": PROMPTS[0]}),
                "",
                json.dumps({"text": PROMPTS[1]}),
                json.dumps({"prompt": PROMPTS[2], "id": 3}),
            ]
        )
    )
    (tmp_path / "p.csv").write_text(
        'id,prompt\n1,The movie was\n2,"She said ""wow"", then"\n3,,\n4,I really hated this film because\n'
    )
    for name in ("p.txt", "p.jsonl", "p.csv"):
        assert read_prompts(tmp_path / name) == PROMPTS, name


def test_csv_takes_a_text_column(tmp_path):
    (tmp_path / "p.csv").write_text("text,label\nGreat start,1\n")
    assert read_prompts(tmp_path / "p.csv") == ["Great start"]


@pytest.mark.parametrize(
    "name, content, message",
    [
        (
            "p.csv",
            "review,label\nGreat,1\n",
            r"p.csv needs a header with a 'prompt' \(or 'text'\) column; found \['review', 'label'\]",
        ),
        ("p.csv", "", r"needs a header with a 'prompt' \(or 'text'\) column; found None"),
        ("p.jsonl", '{"prompt": "ok"}\n{"prompt": 3}\n', r"p.jsonl:2 needs a string field 'prompt'"),
        ("p.jsonl", "{oops\n", r"p.jsonl:1 is not valid JSON"),
        ("p.txt", "\n  \n", r"holds no prompts"),
    ],
)
def test_malformed_files_name_the_problem(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(UserError, match=message):
        read_prompts(tmp_path / name)


def test_max_prompts_keeps_the_first_and_extra_prompts_come_after_each_once(tiny_model_dir, prompts_file):
    from rlhflab.config import build_config
    from rlhflab.session import load_setup, with_extra_prompts

    assert with_extra_prompts(["a", "b"], ["b", "c", "c"]) == ["a", "b", "c"]
    with pytest.raises(UserError, match="data.extra_prompts: an empty prompt"):
        with_extra_prompts(["a"], ["b", " "])
    base = [f"model.name={tiny_model_dir}", "model.device=cpu", "data.source=file", f"data.prompts_file={prompts_file}"]
    extra = "data.extra_prompts=['It was the dullest', 'the plot']"
    setup = load_setup(build_config(overrides=[*base, "data.max_prompts=2", extra]))
    assert setup.train_prompts == ["the movie was", "i really hated", "It was the dullest", "the plot"]
    leak = "data.extra_prompts=['It was the dullest', 'This is the worst']"
    with pytest.raises(UserError, match="'This is the worst' is also a held-out evaluation prompt"):
        load_setup(build_config(overrides=[*base, leak, "eval.prompts=['This is the worst']"]))
    with pytest.raises(UserError, match="data.max_prompts: must be 0"):
        build_config(overrides=[*base, "data.max_prompts=-1"])


def test_demo_negative_openings_are_negative_and_never_held_out(tiny_model_dir, prompts_file):
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    from rlhflab.config import build_config
    from rlhflab.data.corpus import EVAL_OPENINGS, _clashes_with_eval
    from rlhflab.data.demo import NEGATIVE_OPENINGS
    from rlhflab.session import load_setup

    assert len(set(NEGATIVE_OPENINGS)) == len(NEGATIVE_OPENINGS) == 56
    assert not [p for p in NEGATIVE_OPENINGS if _clashes_with_eval(p) or "worst" in p.lower()]
    vader = SentimentIntensityAnalyzer()
    compound = [vader.polarity_scores(p)["compound"] for p in NEGATIVE_OPENINGS]
    # VADER misreads a few ("It felt like a chore": +0.36); as a whole they are negative
    assert sum(compound) / len(compound) < -0.25 and sum(c < 0 for c in compound) >= 30
    base = [f"model.name={tiny_model_dir}", "model.device=cpu", "data.source=file", f"data.prompts_file={prompts_file}"]
    setup = load_setup(build_config(overrides=[*base, "data.extra_prompts=demo-negative", "data.max_prompts=3"]))
    assert setup.train_prompts == ["the movie was", "i really hated", "honestly the", *NEGATIVE_OPENINGS]
    assert not set(setup.train_prompts) & set(EVAL_OPENINGS)
    with pytest.raises(UserError, match="data.extra_prompts: a list of prompts or demo-negative, got 'negative'"):
        load_setup(build_config(overrides=[*base, "data.extra_prompts=negative"]))
