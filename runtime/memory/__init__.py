"""Memories: what a persona remembers about a user across conversations (contract section 15)."""

from runtime.memory.extract import Extractor
from runtime.memory.recall import MEMORY_SIGNAL, Recall, RecallCache
from runtime.memory.store import Memory, MemoryStore

__all__ = ["MEMORY_SIGNAL", "Extractor", "Memory", "MemoryStore", "Recall", "RecallCache"]
