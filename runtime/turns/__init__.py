"""Turn records, feedback on them, and the analytics read from them (contract section 16)."""

from runtime.turns.log import TurnLog

__all__ = ["TurnLog"]
