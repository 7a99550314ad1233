"""Turning a model's free text into one ALFWorld command.

Takes the `Action:` line if there is one (else the first non-empty line), drops stray prompt characters, quotes,
casing and a trailing period, maps the older `put X in/on Y` to `move X to Y`, and matches it to the admissible
commands (exactly, then ignoring articles, then by a close spelling with the same instance numbers). An unmatched
command is returned normalised: the game answers "Nothing happens." and it counts as a step, as in the benchmark.
"""
from __future__ import annotations

import difflib
import re

_ACTION = re.compile(r"action\s*:\s*(.*)", re.IGNORECASE)
_PUT = re.compile(r"^put (.+?) (?:in|on|into|onto|in/on) (.+)$")
_ARTICLES = re.compile(r"\b(?:the|a|an|some)\b\s*")
_DIGITS = re.compile(r"\d+")
_STRAY = " \t\"'`>*-.:;,!"
CLOSE_MATCH = 0.85


def extract(text: str) -> str:
    """The command text: what follows the first 'Action:' marker (on its line, or the next line if it ends
    there), else the first non-empty line."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for i, line in enumerate(lines):
        match = _ACTION.search(line)
        if match:
            rest = match.group(1).strip(_STRAY)
            return rest or (lines[i + 1] if i + 1 < len(lines) else "")
    return lines[0] if lines else ""


def normalise(command: str) -> str:
    command = " ".join(command.strip().strip(_STRAY).lower().split())
    match = _PUT.match(command)
    if match:
        command = f"move {match.group(1)} to {match.group(2)}"
    return command


def _bare(command: str) -> str:
    return " ".join(_ARTICLES.sub("", command).split())


def parse_action(text: str, admissible: list[str]) -> str:
    """The admissible command the text names, or the normalised text when none matches."""
    command = normalise(extract(text))
    if command in admissible:
        return command
    bare = {_bare(a): a for a in admissible}
    if _bare(command) in bare:
        return bare[_bare(command)]
    same_numbers = [b for b in bare if _DIGITS.findall(b) == _DIGITS.findall(command)]  # never swap instances
    close = difflib.get_close_matches(_bare(command), same_numbers, n=1, cutoff=CLOSE_MATCH)
    return bare[close[0]] if close else command
