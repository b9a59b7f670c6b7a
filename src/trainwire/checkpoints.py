"""The public face of checkpointing that the README shows: ``from trainwire.checkpoints import load_weights``.

The code lives in ``trainwire.checkpointing``; this module only hands its public names on.
"""

from trainwire.checkpointing.store import (
    CheckpointStore,
    LocalCheckpointStore,
    export_weights,
    load_weights,
    read_checkpoint,
    verify,
)

__all__ = ["CheckpointStore", "LocalCheckpointStore", "export_weights", "load_weights", "read_checkpoint", "verify"]
