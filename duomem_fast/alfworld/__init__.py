"""ALFWorld: game sources (official, generated), env wrapper, expert teacher, prompts, agent loop, records."""
