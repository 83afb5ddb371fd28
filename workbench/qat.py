"""The qat stage (being written)."""
