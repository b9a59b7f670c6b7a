"""Reading batches: what goes wrong while a loader produces them becomes one ``DataError`` line.

The loop reads every batch, training and validation, through ``read``. An exception out of
the loader (the user's dataset, their collate function, torch's ``default_collate``, a
DataLoader worker that died or stalled) becomes a ``DataError`` that names the split, the
batch and the user's own message, instead of a traceback through torch's worker machinery.
A ``DataLoader`` worker re-raises the dataset's exception with the worker's whole traceback
as its message; the frames are read from that text, the same way as from a live traceback.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Iterable, Iterator
from typing import Any

from trainwire.errors import DataError

_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line \d+, in (?P<name>\S+)', re.MULTILINE)
_TORCH_DATA = ("torch/utils/data/", "torch\\utils\\data\\")


def read(batches: Iterable[Any], split: str, start: int = 0) -> Iterator[Any]:
    """The batches of ``batches``; an exception raised while one is produced becomes a ``DataError``.

    ``split`` (``train``/``val``) and ``start`` (the index of the first batch) name the batch in
    the message. A ``DataError`` raised inside passes as it is. Only producing a batch is
    covered: what the consumer does with it (the model, the loss) is not a data error.
    """
    index = start
    try:
        iterator = iter(batches)  # a DataLoader starts its workers here
    except DataError:
        raise
    except Exception as error:
        raise data_error(error, split, index) from error
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except DataError:
            raise
        except Exception as error:
            _stop_workers(iterator)
            raise data_error(error, split, index) from error
        yield batch
        index += 1


def _stop_workers(iterator: Iterator[Any]) -> None:
    """Ends a DataLoader iterator's workers now: the error's traceback keeps the iterator alive, and a
    stuck worker would outlive the run (in an embedding service, the service) holding its pipes."""
    shutdown = getattr(iterator, "_shutdown_workers", None)  # torch's own cleanup, as its __del__ calls it
    if shutdown is not None:
        shutdown()


def data_error(error: BaseException, split: str, index: int) -> DataError:
    """The one line for ``error``, raised while batch ``index`` of ``split`` was produced."""
    where, message = f"data ({split} split, batch {index})", str(error)
    if isinstance(error, RuntimeError) and message.startswith("DataLoader timed out after"):
        return DataError(f"{where}: no batch came from the DataLoader's workers in {message.split()[4]} s "
                         "(data.timeout_s): a worker is stuck in the dataset or collate function (a lock, a read "
                         "that never returns); raise data.timeout_s if a batch honestly takes that long")
    if isinstance(error, RuntimeError) and message.startswith("DataLoader worker"):
        return DataError(f"{where}: a DataLoader worker died ({_one_line(message)}): it was killed, often for "
                         "memory (RAM or /dev/shm); data.num_workers=0 reads in this process and shows the cause")
    frames, own = _frames(error, message)
    return DataError(f"{where}: {_origin(frames)} raised {type(error).__name__}: {own}")


def _frames(error: BaseException, message: str) -> tuple[list[tuple[str, str]], str]:
    """The (file, function) frames, innermost last, and the error's own message, of a live or worker error."""
    if message.startswith("Caught ") and "Original Traceback" in message:  # re-raised from a worker
        lines = message.splitlines()
        frames = [(m["file"], m["name"]) for m in _FRAME.finditer(message)]
        # The exception's own lines follow the last indented (frame or source) line of the worker's traceback.
        last = max((i for i, line in enumerate(lines) if line.startswith(" ")), default=0)
        own = " ".join(line.strip() for line in lines[last + 1:] if line.strip())
        own = own.partition(": ")[2] if ": " in own else own  # "ValueError: msg" -> "msg"
        return frames, _one_line(own) or "(no message)"
    frames = [(frame.filename, frame.name) for frame in traceback.extract_tb(error.__traceback__)]
    return frames, _one_line(message) or "(no message)"


def _origin(frames: list[tuple[str, str]]) -> str:
    """Who raised: the dataset, the collate function, torch's default_collate, or (not known) reading the batch."""
    fetch = max((i for i, (file, _) in enumerate(frames) if file.endswith(("_utils/fetch.py", "_utils\\fetch.py"))),
                default=None)
    if fetch is None or fetch + 1 >= len(frames):
        return "reading the batch"
    file, name = frames[fetch + 1]
    if file.endswith(("_utils/collate.py", "_utils\\collate.py")):
        return "collating the samples into a batch (torch's default_collate)"
    if name in ("__getitem__", "__getitems__"):
        return "the dataset"
    if any(part in file for part in _TORCH_DATA):
        return "reading the batch"
    return f"the collate function ({name})"


def _one_line(text: str) -> str:
    return " ".join(text.split())
