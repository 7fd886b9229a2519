from rlhflab.data.imdb import clean_review, opening


def test_cleaning_removes_breaks_and_collapses_runs():
    raw = "Great  film!<br /><br />The cast -- all of them ---- shone.\n\tReally<br/>good"
    assert clean_review(raw) == "Great film! The cast - all of them - shone. Really good"


def test_opening_keeps_the_first_n_words():
    raw = "One two<br />three   four five six seven eight nine ten eleven twelve"
    assert opening(raw, 10) == "One two three four five six seven eight nine ten"
    assert opening("short text", 10) == "short text"


def test_unreachable_hub_names_the_way_out(monkeypatch):
    import sys
    import types

    import pytest

    from rlhflab.data.imdb import imdb_prompts
    from rlhflab.errors import UserError

    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    with pytest.raises(UserError, match="data.prompts_file"):
        imdb_prompts()

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(UserError, match="cannot load 'stanfordnlp/imdb'.*data.prompts_file"):
        imdb_prompts()


def test_imdb_texts_are_whole_cleaned_reviews_and_name_their_way_out(monkeypatch):
    import sys
    import types

    import pytest

    from rlhflab.data.imdb import imdb_texts
    from rlhflab.errors import UserError

    rows = [
        {"text": "Great film.<br /><br />The cast -- all of them --   shine.", "label": 1},
        {"text": "Bad.", "label": 0},
    ]
    calls = []

    def load_dataset(name, split):
        calls.append((name, split))
        return rows

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    assert imdb_texts() == ["Great film. The cast - all of them - shine.", "Bad."]
    assert calls == [("stanfordnlp/imdb", "train[:2000]")]

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(UserError, match="without hub access, give your own documents with .*data.file=FILE"):
        imdb_texts()
