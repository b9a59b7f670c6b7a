"""The public face of checkpointing that the README shows: ``from trainwire.checkpoints import load_weights``.

The code lives in ``trainwire.checkpointing``; this module only hands its public names on.
"""

from trainwire.checkpointing.export import export_weights, load_weights
from trainwire.checkpointing.format import read_checkpoint, verify
from trainwire.checkpointing.store import CheckpointStore, LocalCheckpointStore

__all__ = ["CheckpointStore", "LocalCheckpointStore", "export_weights", "load_weights", "read_checkpoint", "verify"]
