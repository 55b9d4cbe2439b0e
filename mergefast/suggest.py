"""Did-you-mean suggestions for error messages.

A module of its own, below everything that reports a misspelt name (config keys, methods,
parameters, modules, merge options), so that none of them imports another just for this.
"""

from __future__ import annotations

import difflib


def did_you_mean(word: str, choices) -> str:
    """' (did you mean X?)' for the closest of `choices`, or ''."""
    choices = list(choices)
    scores = {c: difflib.SequenceMatcher(None, str(word), c).ratio() for c in choices}
    best = max(scores.values(), default=0.0)
    if best < 0.6:
        return ""
    # Near-ties go to the earlier choice ('modles' -> 'models', not 'modules').
    return f" (did you mean '{next(c for c in choices if scores[c] >= best - 0.1)}'?)"
