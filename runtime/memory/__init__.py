"""Memories: what a persona remembers about a user across conversations (contract section 15)."""

from runtime.memory.store import Memory, MemoryStore

__all__ = ["Memory", "MemoryStore"]
