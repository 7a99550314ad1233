"""ALFWorld: game sources (official, generated), env wrapper, expert teacher, prompts, agent loop, records."""
from .agent import EnginePolicy, Policy, run_episode, run_games
from .env import AlfEnv, Observation
from .expert import ExpertPolicy
from .games import SPLITS, TASK_TYPES, Game, list_games
from .records import append_record, config_fingerprint, read_records

__all__ = ["AlfEnv", "EnginePolicy", "ExpertPolicy", "Game", "Observation", "Policy", "SPLITS", "TASK_TYPES",
           "append_record", "config_fingerprint", "list_games", "read_records", "run_episode", "run_games"]
