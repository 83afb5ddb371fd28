"""The distill stage (being written)."""
