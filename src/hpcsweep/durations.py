"""Durations as people read them in progress lines (`42s`, `5m10s`, `2h05m`), and the time left.

Shared by the training's epoch lines and the local executor's point lines; it imports nothing
heavy, so that `hpcsweep grid` can print point lines without loading torch.
"""

from __future__ import annotations


def short_duration(seconds: float) -> str:
    """`42s` under a minute, `5m10s` under an hour, `2h05m` beyond: seconds stop mattering there."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def time_left(durations: list[float], remaining: int) -> float:
    """The mean of the `durations` so far times the `remaining` count of items like them."""
    return sum(durations) / len(durations) * remaining if durations else 0.0
