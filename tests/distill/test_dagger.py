import importlib.util
import json

import pytest

from duomem_fast.distill.dagger import DaggerConfig, agreement, collect_dagger
from duomem_fast.distill.dataset import learned_steps
from duomem_fast.distill.config import TrainConfig
from duomem_fast.distill.train import build_examples, load_student

from helpers import SAMPLE, records, sample_suite

HAVE_ALFWORLD = all(importlib.util.find_spec(m) for m in ("alfworld", "textworld", "fast_downward"))
needs_game = pytest.mark.skipif(not HAVE_ALFWORLD or not (SAMPLE / "game.tw-pddl").is_file(),
                                reason=f"needs alfworld, textworld, fast_downward and the real ALFWorld sample at {SAMPLE}")


@pytest.fixture(scope="module")
def engine(tiny_model):
    from duomem_fast.engine import Engine
    return Engine.from_pretrained(str(tiny_model))


def _expert_actions(root):
    from duomem_fast.alfworld.agent import run_episode
    from duomem_fast.alfworld.expert import ExpertPolicy
    from duomem_fast.alfworld.games import list_games
    return run_episode(list_games(root, "train")[0], ExpertPolicy(seed=0), max_steps=30)["actions"]


@needs_game
def test_beta_one_plays_the_expert_and_labels_every_step(engine, tmp_path):
    root = sample_suite(tmp_path / "data")
    recs = collect_dagger(root, tmp_path / "d.jsonl", engine, None, DaggerConfig(beta=1.0, max_steps=30), progress=False)
    rec = recs[0]
    assert rec["won"] and rec["actions"] == _expert_actions(root)      # every disagreement went the expert's way
    assert rec["labels"] == rec["actions"] and agreement(recs) == 1.0
    assert all(learned_steps(rec)[i] for i, a in enumerate(rec["actions"]) if not a.startswith(("look", "inventory")))


@needs_game
def test_beta_zero_plays_the_student_and_learns_only_agreements(engine, tmp_path):
    root = sample_suite(tmp_path / "data")
    out = tmp_path / "d.jsonl"
    cfg = DaggerConfig(beta=0.0, max_steps=6)
    rec = collect_dagger(root, out, engine, None, cfg, progress=False)[0]
    from duomem_fast.alfworld.agent import EnginePolicy, run_episode
    from duomem_fast.alfworld.games import list_games
    alone = run_episode(list_games(root, "train")[0], EnginePolicy(engine), max_steps=6)
    assert rec["actions"] == alone["actions"] and len(rec["labels"]) == 6   # the random student played itself
    learned = learned_steps(rec)
    assert all(a == lab for a, lab, keep in zip(rec["actions"], rec["labels"], learned) if keep)
    assert sum(learned) < 6                     # a random tiny model does not match the expert everywhere
    lines = out.read_text().splitlines()
    collect_dagger(root, out, engine, None, cfg, progress=False)          # rerun: nothing played again
    assert out.read_text().splitlines() == lines
    collect_dagger(root, out, engine, None, DaggerConfig(beta=0.0, max_steps=7), progress=False)
    assert len(out.read_text().splitlines()) == len(lines) + 1            # another config is another run


def test_learned_steps_of_a_dagger_record():
    rec = {**records()[0]}
    n = len(rec["actions"])
    rec["labels"] = [rec["actions"][0], "go to nowhere 1"] + [None] * (n - 2)
    assert learned_steps(rec) == [True] + [False] * (n - 1)
    with pytest.raises(ValueError, match="labels"):
        learned_steps({**rec, "labels": rec["labels"][:-1]})


def test_dagger_records_train_with_their_own_playbook(tiny_model):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model)
    rec = {**records()[0], "won": False, "playbook": "PLAYBOOK-MARK"}
    rec["labels"] = list(rec["actions"])
    ex = build_examples([rec], tok, TrainConfig(model=str(tiny_model), max_len=4096, memory_fraction=1.0))[0]
    assert "PLAYBOOK-MARK" in tok.decode(ex.input_ids) and ex.n_targets > 0


def test_bad_dagger_config_and_init_adapter(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="beta"):
        DaggerConfig(beta=1.5)
    with pytest.raises(ValueError, match="shard"):
        DaggerConfig(shard=2, shards=2)
    with pytest.raises(ValueError, match="no adapter_config"):
        load_student(TrainConfig(model=str(tiny_model), init_adapter=str(tmp_path)))
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 4, "target_modules": ["q_proj"]}))
    (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="r=4"):
        load_student(TrainConfig(model=str(tiny_model), init_adapter=str(tmp_path)))


class _Scripted:
    """A policy that plays a fixed list of commands (student or expert stand-in)."""
    failed, playbook = False, None

    def __init__(self, commands):
        self.commands, self.told = list(commands), []

    def begin(self, *args):
        pass

    def act(self, observation, admissible):
        return self.commands.pop(0)

    def executed(self, action):
        self.told.append(action)


def test_labels_stop_after_the_student_moves_an_object_against_the_expert():
    from duomem_fast.distill.dagger import DaggerPolicy
    student = _Scripted(["go to sofa 1", "go to desk 1", "take pen 1 from desk 1", "go to shelf 1", "go to desk 1"])
    expert = _Scripted(["go to sofa 1", "go to shelf 1", "go to shelf 1", "go to shelf 1", "go to shelf 1"])
    policy = DaggerPolicy(student, expert, beta=0.0)
    policy.begin("put a pen in shelf", "pick_and_place_simple", "obs", [])
    played = [policy.act("obs", []) for _ in range(5)]
    assert played == ["go to sofa 1", "go to desk 1", "take pen 1 from desk 1", "go to shelf 1", "go to desk 1"]
    assert policy.labels == ["go to sofa 1", "go to shelf 1", "go to shelf 1", None, None]   # a stray walk keeps them
    assert expert.told == played[:3]


def test_shards_partition_the_games_and_do_not_move_when_the_suite_grows():
    from duomem_fast.distill.dagger import shard_of
    ids = [f"train/task-{i}/trial_S1_{i:05d}/game.tw-pddl" for i in range(40)]
    first = {g: shard_of(g, 3) for g in ids[:20]}
    assert {g: shard_of(g, 3) for g in ids}.items() >= first.items()
    assert set(first.values()) == {0, 1, 2}
