"""Authoring: dry runs, previews, comparisons, test suites and version history for persona authors."""
