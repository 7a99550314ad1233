import pytest

from duomem_fast.harness import testing as T
from duomem_fast.harness.metrics import summarize
from duomem_fast.harness.runner import Plan, RunOptions, run_games
from duomem_fast.harness.store import EpisodeLog


def _plan(in_worker):
    return Plan(make_env=T.make_fake_env, make_policy=T.make_solver, play=T.fake_play,
                game_id=T.fake_game_id, in_worker=in_worker)


@pytest.mark.parametrize("workers,in_worker", [(1, True), (2, True), (3, False)])
def test_parallel_modes_give_the_serial_summary(tmp_path, workers, in_worker):
    games = T.fake_games(7)
    ref_log = EpisodeLog(tmp_path / "ref.jsonl")
    run_games(_plan(True), games, ref_log, RunOptions(max_steps=6, workers=1, progress=False))
    log = EpisodeLog(tmp_path / "par.jsonl")
    run_games(_plan(in_worker), games, log, RunOptions(max_steps=6, workers=workers, progress=False))
    ids = [g.path for g in games]
    a, b = summarize(ref_log.ordered(ids)), summarize(log.ordered(ids))
    keys = ("games", "won", "per_type", "avg_steps")
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
    assert 0 < a["won"] < 7          # the flaky solver loses some games: the comparison is not vacuous


def test_rerun_skips_done_games(tmp_path):
    games = T.fake_games(5)
    log = EpisodeLog(tmp_path / "e.jsonl")
    run_games(_plan(True), games[:2], log, RunOptions(max_steps=6, workers=1, progress=False))
    first = dict(log.records)
    run_games(_plan(True), games, log, RunOptions(max_steps=6, workers=1, progress=False))
    assert len((tmp_path / "e.jsonl").read_text().splitlines()) == 5
    assert all(log.records[g] == r for g, r in first.items())


def test_bad_options_name_the_value():
    with pytest.raises(ValueError, match="workers"):
        RunOptions(workers=0)


@pytest.mark.parametrize("workers,in_worker", [(1, True), (2, True), (2, False)])
def test_failed_episodes_are_not_recorded_and_the_rest_go_on(tmp_path, workers, in_worker):
    import dataclasses

    games = T.fake_games(5)
    games[1] = dataclasses.replace(games[1], explode=True)
    log = EpisodeLog(tmp_path / "e.jsonl")
    _, errors = run_games(_plan(in_worker), games, log, RunOptions(max_steps=6, workers=workers, progress=False))
    assert [g for g, _ in errors] == [games[1].path] and "cannot load" in errors[0][1]
    assert sorted(log.records) == sorted(g.path for g in games if not g.explode)


def test_a_config_that_fails_every_episode_stops_early(tmp_path):
    import dataclasses

    from duomem_fast.harness.runner import EpisodeError

    games = [dataclasses.replace(g, explode=True) for g in T.fake_games(6)]
    with pytest.raises(EpisodeError, match="cannot load"):
        run_games(_plan(True), games, EpisodeLog(tmp_path / "e.jsonl"), RunOptions(max_steps=6, workers=1,
                                                                                  progress=False))


def test_small_selections_cover_every_task_type():
    from duomem_fast.harness.evaluate import interleave_by_type

    games = T.fake_games(9, types=("a", "b", "c"))
    order = interleave_by_type(list(reversed(games)))
    assert [g.task_type for g in order[:3]] == ["a", "b", "c"]
    assert sorted(g.path for g in order) == sorted(g.path for g in games)
    assert interleave_by_type(games) == order
