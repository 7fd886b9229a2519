"""Preference pairs: the file format, its one-line errors (file and line named), chat rendering, the demo pairs."""

import json

import pytest

from rlhflab.data.corpus import _NEGATIVE, _POSITIVE, EVAL_OPENINGS
from rlhflab.data.pairs import demo_pairs, ensure_demo_pairs
from rlhflab.data.preferences import PreferencePair, read_pairs_file, render_pairs, split_pairs
from rlhflab.errors import UserError

GOOD = {"prompt": "The movie was", "chosen": " great.", "rejected": " awful."}


def write(tmp_path, rows, name="pairs.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_reads_standard_pairs_and_skips_blank_lines(tmp_path):
    path = write(tmp_path, [GOOD, "", {**GOOD, "chosen": " fine."}])
    rows = read_pairs_file(path)
    assert render_pairs(rows) == [PreferencePair(**GOOD), PreferencePair("The movie was", " fine.", " awful.")]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([GOOD, {"prompt": "x", "chosen": "a"}], r"pairs.jsonl:2: missing field 'rejected'"),
        ([{**GOOD, "rejected": " great."}], r"pairs.jsonl:1: chosen and rejected are identical"),
        ([GOOD, "{not json"], r"pairs.jsonl:2 is not valid JSON"),
        ([{**GOOD, "chosen": 3}], r"pairs.jsonl:1: field 'chosen' must be a string or a list"),
        ([{**GOOD, "chosen": "  "}], r"pairs.jsonl:1: field 'chosen' is empty"),
        ([["a", "b"]], r"pairs.jsonl:1: expected a JSON object"),
        ([{**GOOD, "chosen": [{"role": "assistant", "content": "hi"}]}], r"pairs.jsonl:1: mixes text and message"),
    ],
)
def test_bad_rows_are_one_line_errors_naming_file_and_line(tmp_path, rows, message):
    with pytest.raises(UserError, match=message) as err:
        read_pairs_file(write(tmp_path, rows))
    assert "\n" not in str(err.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_pairs_file(tmp_path / "nope.jsonl")
    with pytest.raises(UserError, match="holds no preference pairs"):
        read_pairs_file(write(tmp_path, ["", "  "]))


class ChatTokenizer:
    """What render_pairs needs of a tokenizer: a chat template rendered as "<role>: content\\n" turns."""

    chat_template = "yes"

    def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=False):
        text = "".join(f"<{m['role']}>: {m['content']}\n" for m in messages)
        return text + ("<assistant>: " if add_generation_prompt else "")


def test_conversational_pairs_go_through_the_chat_template(tmp_path):
    row = {
        "prompt": [{"role": "user", "content": "Review it"}],
        "chosen": [{"role": "assistant", "content": "Great film."}],
        "rejected": [{"role": "assistant", "content": "Awful film."}],
    }
    rows = read_pairs_file(write(tmp_path, [row]))
    (pair,) = render_pairs(rows, ChatTokenizer())
    assert pair == PreferencePair("<user>: Review it\n<assistant>: ", "Great film.\n", "Awful film.\n")
    with pytest.raises(UserError, match="need a tokenizer with a chat template"):
        render_pairs(rows, tokenizer=None)

    class Inconsistent(ChatTokenizer):  # its generation prompt is not how it renders an assistant turn
        def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=False):
            return super().apply_chat_template(messages) + ("<bot>: " if add_generation_prompt else "")

    with pytest.raises(UserError, match="prefix of chosen"):
        render_pairs(rows, Inconsistent())


def test_split_pairs_holds_out_the_tail():
    assert split_pairs(list(range(10)), 0.2) == (list(range(8)), [8, 9])
    assert split_pairs(list(range(3)), 0.01) == ([0, 1], [2])  # at least one held out
    assert split_pairs(list(range(3)), 0.0) == ([0, 1, 2], [])


def test_demo_pairs_are_deterministic_distinct_and_never_an_eval_opening(tmp_path):
    pairs = demo_pairs(300, seed=0)
    assert pairs == demo_pairs(300, seed=0) and pairs[:100] == demo_pairs(100, seed=0)
    assert len(set(pairs)) == 300
    for p in pairs:
        assert p.chosen != p.rejected and p.chosen.startswith(" ") and p.rejected.startswith(" ")
        assert not any(p.prompt.startswith(o) or o.startswith(p.prompt) for o in EVAL_OPENINGS)
        assert 2 <= len(p.prompt.split()) <= 6
    files = ensure_demo_pairs(home=tmp_path)
    train, held_out = read_pairs_file(files.train_file), read_pairs_file(files.eval_file)
    assert len(train) == 2000 and len(held_out) == 200
    assert not {json.dumps(r) for r in train} & {json.dumps(r) for r in held_out}


def test_demo_pairs_are_labelled_by_the_grammar():
    """The chosen continuation's first sentence comes from the positive templates, the rejected one's from the
    negative templates (checked on templates without slots, which appear verbatim)."""
    fixed_pos = {t for t in _POSITIVE if "{" not in t}
    fixed_neg = {t for t in _NEGATIVE if "{" not in t}
    pairs = demo_pairs(2000, seed=0)
    seen_pos = sum(any(t in p.chosen for t in fixed_pos) for p in pairs)
    seen_neg = sum(any(t in p.rejected for t in fixed_neg) for p in pairs)
    assert seen_pos > 50 and seen_neg > 50
    assert not any(any(t in p.chosen for t in fixed_neg) for p in pairs)
    assert not any(any(t in p.rejected for t in fixed_pos) for p in pairs)
