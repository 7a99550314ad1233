"""DAgger data: the student plays train games, the expert labels every state the student reaches (Ross et al.,
AISTATS 2011; ALFWorld's own text agents are trained this way with the same handcoded expert).

Expert trajectories only show the student states the expert reaches. Once the student errs (walks past its
object, re-visits a receptacle) it is in states it never saw a label for, and it loops until the step limit: that
is where 85% of the shipped student's model time went. Here both propose a command at every step. Where they
agree, it is played and learned. Where they differ, the expert's command is played with probability `beta` (a
correction in a state the student reached: learned) and the student's otherwise (its mistake stays in the context
without loss, so the expert's next labels teach the way back). Labels stop once the expert gives up, and once the
student moved or changed an object against the expert's label: alfworld's handcoded expert tracks objects through its
own actions, so after a student's stray `move creditcard 2 to sofa 1` it searches drawers for the card it thinks
it holds and its labels loop (seen in the first probe games). Stray walks, opens and looks keep the labels.

Records are the usual episode records plus `labels` (the expert's command per step, None once it failed) and
`playbook` (the text the student saw: other games' memories only); `dataset.learned_steps` learns exactly the
steps where the played command equals the label. Appended as episodes end; a rerun skips finished games.

    python -m duomem_fast.distill.dagger --data DIR --out dagger.jsonl [--games 150 --shard 0/2 --beta 0.5]
"""
from __future__ import annotations

import argparse
import hashlib
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from duomem_fast.alfworld.agent import run_episode
from duomem_fast.alfworld.games import SPLITS, list_games
from duomem_fast.alfworld.records import append_record, config_fingerprint, read_records
from duomem_fast.memory.playbook import PARTS, format_playbook


@dataclass(slots=True)
class DaggerConfig:
    split: str = "train"
    max_games: int | None = None   # N games of the sorted split, from first_game (None: all)
    first_game: int = 0
    max_steps: int = 40
    beta: float = 0.5              # where student and expert differ, the chance that the expert's command is played
    k: int = 2                     # memories in the student's playbook (as the duomem preset)
    parts: str = "script"
    seed: int = 0
    shard: int = 0                 # this process plays the games whose id hashes to it (shard_of)
    shards: int = 1

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ValueError(f"unknown split {self.split!r}; expected one of {SPLITS}")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {self.beta}")
        if self.max_steps < 1 or self.k < 0 or (self.max_games is not None and self.max_games < 1) \
                or self.first_game < 0:
            raise ValueError(f"need max_steps >= 1, k >= 0, max_games >= 1 or None, first_game >= 0; got "
                             f"{self.max_steps}, {self.k}, {self.max_games}, {self.first_game}")
        if self.parts not in PARTS:
            raise ValueError(f"parts {self.parts!r} not in {PARTS}")
        if not 0 <= self.shard < self.shards:
            raise ValueError(f"shard must be in [0, shards), got {self.shard}/{self.shards}")

    def fingerprint_fields(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("shard", "shards")}


MOVES_OBJECTS = ("take", "move", "put", "heat", "cool", "clean", "slice")


class DaggerPolicy:
    """student: an EnginePolicy (its playbook is set here); expert: an ExpertPolicy; bank: a MemoryBank or None."""

    name = "dagger"

    def __init__(self, student, expert, bank=None, k: int = 2, parts: str = "script", beta: float = 0.5,
                 seed: int = 0):
        self.student, self.expert, self.bank = student, expert, bank
        self.k, self.parts, self.beta, self.seed = k, parts, beta, seed
        self.labels: list[str | None] = []
        self._rng, self._stopped = random.Random(seed), False

    def attach(self, env) -> None:
        self.expert.attach(env)

    def begin(self, task: str, task_type: str, observation: str, admissible: list[str]) -> None:
        self.student.playbook = self._playbook(task, task_type)
        self.student.begin(task, task_type, observation, admissible)
        self.expert.begin(task, task_type, observation, admissible)
        self.labels, self._rng = [], random.Random(f"{self.seed}:{task}:{observation}")
        self._stopped = False

    def act(self, observation: str, admissible: list[str]) -> str:
        mine = self.student.act(observation, admissible)
        label = None if self._stopped else self.expert.act(observation, admissible)
        label = None if self.expert.failed else label
        played = mine
        if label is not None and label != mine and self._rng.random() < self.beta:
            played = label
            self.student.conv.messages[-1]["content"] = label   # the student's context shows what was played
        if label is not None:
            self.expert.executed(played)
            self._stopped = played != label and played.split(" ", 1)[0] in MOVES_OBJECTS
        self._stopped = self._stopped or self.expert.failed
        self.labels.append(label)
        return played

    def usage(self) -> dict:
        return self.student.usage()

    def _playbook(self, task: str, task_type: str) -> str | None:
        """The k best memories of *other* tasks: the game's own memory would hand the student its answer."""
        if self.bank is None or self.k == 0:
            return None
        hits = [m for m in self.bank.retrieve(task, self.k + 8, task_type=task_type) if m.task != task]
        return format_playbook(hits[:self.k], self.parts) or None


def collect_dagger(data_root, out_jsonl: str | Path, engine, bank, config: DaggerConfig | None = None,
                   progress: bool = True, also_done: tuple = ()) -> list[dict]:
    """Play (or resume) this shard's games; returns its records (earlier ones read back, new ones played).
    also_done: more record files whose games (same config) count as played."""
    from tqdm import tqdm

    from duomem_fast.alfworld.agent import EnginePolicy
    from duomem_fast.alfworld.expert import ExpertPolicy
    cfg = config or DaggerConfig()
    end = None if cfg.max_games is None else cfg.first_game + cfg.max_games
    games = [g for g in list_games(data_root, cfg.split)[cfg.first_game:end] if shard_of(g.id, cfg.shards) == cfg.shard]
    if not games and cfg.shards == 1:
        raise ValueError(f"no {cfg.split} games from #{cfg.first_game} under {data_root} for this DAgger round")
    fp = config_fingerprint({**cfg.fingerprint_fields(), "engine": engine.fingerprint,
                             "bank": bank.content_sha() if bank else None})
    done = {r["game"]: r for r in read_records(out_jsonl) if r.get("config") == fp}
    for other in also_done:                       # other runs' files: their games are not played again
        done.update({r["game"]: r for r in read_records(other) if r.get("config") == fp and r["game"] not in done})
    student = EnginePolicy(engine, name="student")
    policy = DaggerPolicy(student, ExpertPolicy(seed=cfg.seed), bank, cfg.k, cfg.parts, cfg.beta, cfg.seed)
    records = []
    with tqdm(games, desc=f"dagger {cfg.shard}/{cfg.shards}", unit="game", disable=not progress) as bar:
        for game in bar:
            if game.id not in done:
                rec = run_episode(game, policy, max_steps=cfg.max_steps, config=fp)
                rec.update(labels=policy.labels, playbook=student.playbook)
                append_record(out_jsonl, rec)
                done[game.id] = rec
            records.append(done[game.id])
            bar.set_postfix(won=sum(r["won"] for r in records), agree=f"{agreement(records):.2f}")
    return records


def run_round(data_root, out_dir: str | Path, adapter: str | Path, bank, cfg: DaggerConfig, train_cfg,
              expert_records: list[dict], replay: list[dict], n_expert: int, progress: bool = True) -> tuple:
    """One DAgger round as a resumable stage: the student with `adapter` plays cfg's games (out_dir/rollouts.jsonl),
    then the adapter continues training (out_dir/adapter) on those rollouts + `replay` (earlier rounds' rollouts)
    + up to n_expert of the teacher's won trajectories of the same games. -> (rollouts, training summary)."""
    from dataclasses import replace

    from duomem_fast.distill.train import train_lora
    from duomem_fast.engine import Engine
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    engine = Engine.from_pretrained(model=train_cfg.model, adapter=str(adapter))
    rollouts = collect_dagger(data_root, out / "rollouts.jsonl", engine, bank, cfg, progress)
    del engine
    played = {r["game"] for r in rollouts}
    expert = sorted((r for r in expert_records if r["game"] in played and r["won"]), key=lambda r: r["game"])
    random.Random(cfg.seed).shuffle(expert)
    cfg_round = replace(train_cfg, init_adapter=str(adapter))
    summary = train_lora(expert[:n_expert] + replay + rollouts, out / "adapter", cfg_round, bank=bank,
                         progress=progress)
    return rollouts, summary


def shard_of(game_id: str, shards: int) -> int:
    """A game's shard by a hash of its id: stable while a suite grows (list slices are not)."""
    return int(hashlib.sha1(game_id.encode()).hexdigest()[:8], 16) % shards


def agreement(records: list[dict]) -> float:
    """Share of labelled steps where the student's played command was the expert's."""
    pairs = [(a, lab) for r in records for a, lab in zip(r["actions"], r.get("labels") or []) if lab is not None]
    return sum(a == lab for a, lab in pairs) / max(1, len(pairs))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="data root holding json_2.1.1/")
    p.add_argument("--out", required=True, type=Path, help="records JSONL (appended; a rerun resumes)")
    p.add_argument("--split", default="train")
    p.add_argument("--games", type=int, default=None, help="first N games of the split")
    p.add_argument("--shard", default="0/1", help="I/N: play the games whose id hashes to shard I of N (run N processes)")
    p.add_argument("--beta", type=float, default=0.5)
    p.add_argument("--max-steps", type=int, default=40)
    p.add_argument("--adapter", default=None, help="student's PEFT adapter (default: the shipped one)")
    p.add_argument("--bank", default=None, help="memory bank (default: the shipped one)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--also-done", nargs="*", default=(), help="other record files whose games count as played")
    a = p.parse_args(argv)
    import torch

    from duomem_fast.engine import Engine
    from duomem_fast.memory import MemoryBank, default_adapter_dir, default_bank_path
    shard, _, shards = a.shard.partition("/")
    cfg = DaggerConfig(split=a.split, max_games=a.games, max_steps=a.max_steps, beta=a.beta,
                       shard=int(shard), shards=int(shards or 1))
    torch.set_num_threads(a.threads)
    engine = Engine.from_pretrained(adapter=a.adapter or str(default_adapter_dir()))
    bank = MemoryBank.load(a.bank or default_bank_path())
    recs = collect_dagger(a.data, a.out, engine, bank, cfg, also_done=tuple(a.also_done))
    print(f"{len(recs)} episodes, {sum(r['won'] for r in recs)} won, agreement {agreement(recs):.3f}")


if __name__ == "__main__":
    main()
