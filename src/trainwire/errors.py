"""Errors that trainwire raises on purpose."""


class ConfigError(ValueError):
    """Bad input, found before any work starts.

    The message is one line that names the key (or file) and the offending value, so the CLI
    can print it as is, without a traceback.
    """


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, or one that was asked for cannot be used.

    The message names the file (or folder) and what is wrong with it.
    """


class RunRecordError(RuntimeError):
    """The local run record (``config.yaml``, ``metrics.jsonl``, ``summary.json``) could not be written.

    The message is one line that names the file and the reason.
    """


class DataError(RuntimeError):
    """The data could not be read, or do not fit the model and the objective.

    The message is one line that names the split (train or val), the batch and what was
    expected, or what the user's dataset or collate function raised (their own message).
    ``exit_code`` is 2 for data refused before the first step (bad input, found by the first
    batch's check) and 1 for a failure while running (a dataset that raised, a DataLoader
    worker that died or stalled).
    """

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class NonFiniteError(RuntimeError):
    """Training met a non-finite loss or gradient it was told not to step past."""


class TrainingInterrupted(BaseException):
    """Training stopped at a step boundary (SIGTERM, SIGINT or a ``StopToken``), after writing a checkpoint if it has a store.

    A ``BaseException`` like ``KeyboardInterrupt``: a request to stop is not an error for an
    ``except Exception`` to swallow. ``signum`` is the signal, or None for ``StopToken.stop()``;
    ``exit_code`` is the shell's convention (143, 130; 143 for a token, a polite termination).
    """

    def __init__(self, signum: int | None, *, saved: bool = True) -> None:
        import signal

        self.signum, self.saved = signum, saved  # saved: a checkpoint to resume from exists
        self.exit_code = 128 + (signum or signal.SIGTERM)
        super().__init__(f"interrupted by {signal.Signals(signum).name}" if signum else "stopped by a StopToken")
