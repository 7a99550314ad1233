"""The duomem-fast CLI end to end on real ALFWorld games (copies of the shared sample), on loopback only."""
import json
import threading

import pytest

from duomem_fast.cli import build_parser, main
from duomem_fast.harness.testing import sample_data_root


@pytest.mark.parametrize("command", ["eval", "compare", "games", "distill", "bench", "serve"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([command, "--help"])
    assert e.value.code == 0 and "usage: duomem-fast " + command in capsys.readouterr().out


def test_bad_agent_spec_is_one_clear_error(tmp_path, capsys):
    assert main(["eval", "--agent", "wizard", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "unknown agent kind 'wizard'" in err and "Traceback" not in err
    assert main(["eval", "--threads", "0", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "--threads must be >= 1, got 0" in capsys.readouterr().err


def test_serve_bad_weight_dtype_is_one_clear_error(capsys):
    assert main(["serve", "--wdtype", "float16", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "unsupported dtype 'float16'" in err and "Traceback" not in err


@pytest.fixture
def data(tmp_path):
    pytest.importorskip("alfworld", reason="needs the alfworld package")
    root = sample_data_root(tmp_path / "data", 2)
    if root is None:
        pytest.skip("the real ALFWorld sample game (../shared/alfworld) is not on this machine")
    return root


def _args(data, out, steps, workers=2):
    return ["--data", str(data), "--games", "2", "--max-steps", str(steps), "--workers", str(workers), "--out",
            str(out), "--no-progress"]


def test_compare_with_expert_teacher_writes_the_report(data, tmp_path):
    out = tmp_path / "out"
    # in-process (workers=1): the openai test below runs episodes in parallel, the runner tests the process pool
    assert main(["compare", "--student", "random", "--teacher", "expert", *_args(data, out, 16, workers=1)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    expert, rnd = summary["agents"]["expert"], summary["agents"]["random"]
    assert expert["games"] == rnd["games"] == 2 and expert["won"] == 2
    assert expert["per_type"] == {"pick_heat_then_place_in_recep": {"games": 2, "won": 2, "success_rate": 1.0,
                                                                    "ci95": expert["per_type"]["pick_heat_then_place_in_recep"]["ci95"]}}
    assert expert["env_seconds_per_task"] > 0 and "model_seconds_per_task" in rnd
    pair = summary["pair"]
    assert pair["teacher"] == "expert" and pair["both"] + pair["only_teacher"] == 2 and pair["only_student"] == 0
    md = (out / "report.md").read_text()
    assert "2/2 = 100.0%" in md and "official" in md and "pick_heat_then_place_in_recep" in md
    assert all((out / "plots" / f"{p}.png").stat().st_size > 1000 for p in ("success_per_type", "time_per_task",
                                                                              "steps"))
    records = [json.loads(x) for f in out.glob("runs/expert-*/episodes.jsonl") for x in f.read_text().splitlines()]
    assert len(records) == 2 and all(r["won"] and r["steps"] == expert["avg_steps"] for r in records)


def test_compare_against_our_server_as_openai_teacher(data, tmp_path):
    from duomem_fast import Engine
    from duomem_fast.model.testing import make_tiny_model
    from duomem_fast.server import make_server

    tiny = make_tiny_model(tmp_path / "tiny", "llama", max_position_embeddings=4096)
    srv = make_server(Engine.from_pretrained(str(tiny)), "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    out = tmp_path / "out"
    try:
        code = main(["compare", "--student", f"hf:{tiny},adapter=none,memory=none", "--teacher", f"openai:{url}",
                     *_args(data, out, 2)])
    finally:
        srv.shutdown()
        srv.server_close()
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    teacher = summary["agents"][summary["pair"]["teacher"]]
    student = summary["agents"][summary["pair"]["student"]]
    assert teacher["games"] == student["games"] == 2 and teacher["avg_steps"] == 2
    assert teacher["tokens_out"] > 0 and teacher["model_seconds_per_task"] > 0
    assert teacher["tokens_reused"] > 0            # the server served later steps from the cached prefix
    assert student["tokens_in"] > 0 and student["model_seconds_per_task"] > 0
    assert summary["pair"]["games"] == 2 and (out / "report.md").exists()


def test_engine_per_worker_plays_the_same_episodes_as_one_shared_engine(data, tmp_path):
    from duomem_fast.model.testing import make_tiny_model
    tiny = make_tiny_model(tmp_path / "tiny", "llama", max_position_embeddings=4096)
    actions = {}
    for share in ("1", "0"):
        out = tmp_path / f"share{share}"
        assert main(["eval", "--agent", f"hf:{tiny},adapter=none,memory=none,share={share}", *_args(data, out, 3)]) == 0
        recs = [json.loads(x) for f in out.glob("runs/*/episodes.jsonl") for x in f.read_text().splitlines()]
        actions[share] = {r["game"]: r["actions"] for r in recs}
        assert len(recs) == 2 and all(r["model_seconds"] > 0 and r["tokens_in"] > 0 for r in recs)
    assert actions["0"] == actions["1"]
    assert [p.name for p in (tmp_path / "share0").glob("runs/*")] == [p.name for p in (tmp_path / "share1").glob("runs/*")]


@pytest.mark.parametrize("option,match", [("share=2", "share='2'"), ("share=0,threads=0", "threads=0")])
def test_bad_engine_execution_options(tmp_path, capsys, option, match):
    from duomem_fast.model.testing import make_tiny_model
    tiny = make_tiny_model(tmp_path / "tiny", "llama")
    assert main(["eval", "--agent", f"hf:{tiny},adapter=none,memory=none,{option}", "--data", str(tmp_path),
                 "--out", str(tmp_path / "o")]) == 2
    assert match in capsys.readouterr().err
