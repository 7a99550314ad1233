import json

import pytest

from duomem_fast.harness.store import EpisodeLog, fingerprint, run_dir


def test_run_dir_changes_with_config(tmp_path):
    a = run_dir(tmp_path, "expert", {"max_steps": 50, "split": "valid_unseen"})
    b = run_dir(tmp_path, "expert", {"split": "valid_unseen", "max_steps": 50})
    c = run_dir(tmp_path, "expert", {"max_steps": 30, "split": "valid_unseen"})
    assert a == b != c
    assert json.loads((a / "config.json").read_text())["max_steps"] == 50
    assert fingerprint({"x": 1}) != fingerprint({"x": 2})


def test_log_drops_cut_line_and_never_counts_twice(tmp_path):
    path = tmp_path / "episodes.jsonl"
    log = EpisodeLog(path)
    assert log.append({"game": "g1", "won": True})
    assert not log.append({"game": "g1", "won": False})
    with open(path, "a") as f:
        f.write('{"game": "g2", "won": tr')        # a write cut by kill -9
    again = EpisodeLog(path)
    assert list(again.records) == ["g1"] and again.records["g1"]["won"] is True
    assert again.append({"game": "g2", "won": False})
    lines = path.read_text().splitlines()
    assert [json.loads(x)["game"] for x in lines] == ["g1", "g2"]


def test_log_rejects_garbage_with_the_file_name(tmp_path):
    path = tmp_path / "episodes.jsonl"
    path.write_text("not json\n")
    with pytest.raises(ValueError, match="episodes.jsonl:1"):
        EpisodeLog(path)
