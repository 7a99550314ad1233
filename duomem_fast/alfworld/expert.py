"""alfworld's handcoded expert as a Policy, with its `move`/`put` bookkeeping fixed.

alfworld 0.4.2's expert empties its hands only when `"put" in last_action`, but the 0.4 grammar's put command is
`move X to Y`: after the first placement it still believes it holds the object and loses most pick_two games.
Here a successful `move X to Y` is shown to its state tracker as `put X to Y`.
"""
from __future__ import annotations

import hashlib
import random
from contextlib import contextmanager

from .env import AlfEnv
from .games import read_json

LOOK = "look"


class _MoveIsPut:
    def update_state_tracking(self, game_state, last_action):
        if last_action.startswith("move "):
            last_action = "put " + last_action[len("move "):]
        return super().update_state_tracking(game_state, last_action)


def _agent_class(fix_move: bool = True):
    from alfworld.agents.expert.handcoded_expert_tw import HandCodedTWAgent

    if not fix_move:
        return HandCodedTWAgent

    class FixedHandCodedTWAgent(HandCodedTWAgent):
        def get_task_policy(self, task_param):
            base = super().get_task_policy(task_param)
            return type("Fixed" + base.__name__, (_MoveIsPut, base), {})

    return FixedHandCodedTWAgent


def task_params(traj_path) -> dict:
    """The expert's task parameters from `traj_data.json` (lower-cased the way alfworld does)."""
    import alfworld.gen.constants as constants

    traj = read_json(traj_path, ("task_type", "pddl_params"))
    params = {**traj["pddl_params"], "task_type": traj["task_type"]}
    return {k: v.lower() if v in constants.OBJECTS else v for k, v in params.items()}


class ExpertPolicy:
    """Teacher policy: reads the env's facts (attach the env first; `run_episode` does it).

    seed: the expert breaks ties with `random`; its own generator state is kept apart from the global one.
    fix_move: False plays alfworld's expert as shipped (for comparison).
    """

    name = "expert"

    def __init__(self, seed: int = 0, max_steps: int = 200, fix_move: bool = True):
        self.seed, self.fix_move = seed, fix_move
        self.max_steps = max_steps
        self.env: AlfEnv | None = None
        self.failed = False
        self._agent = None
        self._last = ""
        self._rng_state = None

    def attach(self, env: AlfEnv) -> None:
        self.env = env

    def begin(self, task: str, task_type: str, observation: str, admissible: list[str]) -> None:
        if self.env is None or self.env.state is None:
            raise ValueError("ExpertPolicy needs attach(env) after env.reset() before begin()")
        agent = _agent_class(self.fix_move)(max_steps=self.max_steps)
        agent.task_params = task_params(self.env.game.traj_path)
        agent.policy = agent.get_task_policy(agent.task_params)(agent.task_params, max_steps=self.max_steps)
        self._agent, self._last, self.failed = agent, "", False
        game = read_json(self.env.game.path, ("pddl_problem", "grammar"))  # same game, same choices, wherever
        game_digest = hashlib.sha1((game["pddl_problem"] + game["grammar"]).encode()).hexdigest()
        self._rng_state = random.Random(f"{self.seed}:{game_digest}").getstate()
        agent.observe(self.env.state["feedback"])

    def act(self, observation: str, admissible: list[str]) -> str:
        from alfworld.agents.expert.handcoded_expert import HandCodedAgentFailed, HandCodedAgentTimeout

        state = self.env.state
        try:
            with self._own_random():
                action = self._agent.act(state, 0, state["won"], self._last)
        except (HandCodedAgentFailed, HandCodedAgentTimeout, IndexError, KeyError):
            # IndexError: alfworld's expert picks from an empty list when a lamp it saw is out of view
            self.failed, action = True, LOOK
        if action not in admissible:
            action = LOOK
        self._last = action
        return action

    def executed(self, action: str) -> None:
        """Tell the expert which command was really played after its act() (DAgger: the student's may differ);
        its state tracker reads it with the next state."""
        self._last = action

    def usage(self) -> dict:
        return {"tokens_in": 0, "tokens_reused": 0, "tokens_out": 0, "model_seconds": 0.0}

    @contextmanager
    def _own_random(self):
        outer = random.getstate()
        random.setstate(self._rng_state)
        try:
            yield
        finally:
            self._rng_state = random.getstate()
            random.setstate(outer)
