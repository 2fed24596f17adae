"""The hostile reply families live with the fuzz benchmark (benchmarks/hostile_replies.py), which shares them."""

from benchmarks.hostile_replies import (  # noqa: F401
    BASE,
    HOSTILE,
    INVALID,
    SITES,
    VALID,
    honest_adapter,
    honest_messages,
    hostile_message,
)
