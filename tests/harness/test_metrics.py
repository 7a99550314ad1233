import math

import pytest

from duomem_fast.harness.metrics import paired, speedup, summarize, wilson


def test_wilson_matches_closed_form_values():
    # reference values from the Wilson formula (e.g. statsmodels proportion_confint(method="wilson"))
    lo, hi = wilson(7, 10)
    assert lo == pytest.approx(0.396778, abs=1e-5) and hi == pytest.approx(0.892208, abs=1e-5)
    lo, hi = wilson(0, 5)
    assert lo == 0.0 and hi == pytest.approx(0.434482, abs=1e-5)
    lo, hi = wilson(5, 5)
    assert hi == 1.0 and lo == pytest.approx(0.565518, abs=1e-5)
    assert wilson(0, 0) == (0.0, 1.0)


def _rec(game, won, ttype="a", steps=3, model=1.0, env=0.5):
    return {"game": game, "won": won, "task_type": ttype, "steps": steps, "model_seconds": model,
            "env_seconds": env, "wall_seconds": model + env, "tokens_in": 100, "tokens_reused": 50, "tokens_out": 10}


def test_summarize_counts_types_and_times():
    recs = [_rec("g1", True, "a"), _rec("g2", False, "a", steps=5), _rec("g3", True, "b", model=3.0)]
    s = summarize(recs, wall_seconds=6.0)
    assert s["games"] == 3 and s["won"] == 2 and s["success_rate"] == pytest.approx(2 / 3)
    assert s["per_type"] == {"a": {"games": 2, "won": 1, "success_rate": 0.5, "ci95": list(wilson(1, 2))},
                             "b": {"games": 1, "won": 1, "success_rate": 1.0, "ci95": list(wilson(1, 1))}}
    assert s["model_seconds_per_task"] == pytest.approx(5 / 3)
    assert s["env_seconds_per_task"] == pytest.approx(0.5)
    assert s["avg_steps"] == pytest.approx(11 / 3)
    assert s["gen_tok_per_s"] == pytest.approx(30 / 5)
    assert s["run_seconds_per_task"] == pytest.approx(2.0)


def test_paired_table_and_speedup():
    st = [_rec("g1", True), _rec("g2", False), _rec("g3", True), _rec("g4", False), _rec("g5", True)]
    te = [_rec("g1", True), _rec("g2", True), _rec("g3", False), _rec("g4", False)]
    assert paired(st, te) == {"games": 4, "both": 1, "only_teacher": 1, "only_student": 1, "neither": 1}
    sp = speedup({"wall_seconds_per_task": 2.0, "model_seconds_per_task": 1.0},
                 {"wall_seconds_per_task": 8.0, "model_seconds_per_task": 0.0})
    assert sp["wall"] == 4.0 and sp["model"] is None
