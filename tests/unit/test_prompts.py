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
