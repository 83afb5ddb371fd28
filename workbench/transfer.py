"""The transfer stage (being written)."""
