"""Checkpointing: the checkpoint format and store, the stateful parts, the background writer,
sharded saves, the run folder and its lock."""
