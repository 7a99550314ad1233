"""JSONL records: whole lines survive, a torn last line from a kill is ignored, fingerprints are canonical."""
import pytest

from duomem_fast.alfworld.records import append_record, config_fingerprint, read_records


def test_append_and_read(tmp_path):
    path = tmp_path / "sub" / "runs.jsonl"
    assert read_records(path) == []
    append_record(path, {"game": "a", "won": True})
    append_record(path, {"game": "b", "won": False})
    assert read_records(path) == [{"game": "a", "won": True}, {"game": "b", "won": False}]


def test_torn_line_is_ignored_and_healed(tmp_path):
    path = tmp_path / "runs.jsonl"
    append_record(path, {"game": "a"})
    with open(path, "a") as f:
        f.write('{"game": "b", "wo')  # killed mid-write
    assert read_records(path) == [{"game": "a"}]
    append_record(path, {"game": "c"})
    assert read_records(path) == [{"game": "a"}, {"game": "c"}]


def test_corrupt_middle_line_is_an_error(tmp_path):
    path = tmp_path / "runs.jsonl"
    path.write_text('{"game": "a"}\n{"game": oops}\n{"game": "c"}\n')
    with pytest.raises(ValueError, match="runs.jsonl:2"):
        read_records(path)


def test_fingerprint():
    a = config_fingerprint({"model": "m", "k": 3, "nested": {"x": 1, "y": 2}})
    b = config_fingerprint({"nested": {"y": 2, "x": 1}, "k": 3, "model": "m"})
    assert a == b and len(a) == 16
    assert config_fingerprint({"model": "m", "k": 4}) != config_fingerprint({"model": "m", "k": 3})
    with pytest.raises(ValueError, match="list"):
        config_fingerprint(["not", "a", "dict"])
