"""The lowrank stage (being written)."""
