"""An online learner's state on local disk: written atomically, read back at start.

What a restart must keep is more than the model: the features still awaiting labels, the
early labels, the counters, and *where in the labels topic* that state stands, so that the
labels after the checkpoint are learned again (once) and none before it twice. All of it is
one :class:`Checkpoint`, pickled into one file, replaced atomically (write a temporary file
in the same directory, fsync, ``os.replace``, fsync the directory): a crash at any point
leaves the previous checkpoint or the new one, never half of one.

Why a local file and not a compacted Kafka topic: a river model is pickled, and unpickling
runs code named by the bytes. The project loads a pickle only from a file the operator
names (``--state-dir``), never from a topic anyone with produce rights could write to. The
state directory is as trusted as a model file: whoever can write it can run code in the
worker. The cost: the state lives on the worker's disk, so a worker moved to another host
starts from the spec's model unless its state directory moves with it.
"""

from __future__ import annotations

import fcntl
import os
import pickle
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.errors import CheckpointError
from streams.learning.store import FeatureStore

__all__ = ["CHECKPOINT_VERSION", "Checkpoint", "checkpoint_path", "load", "lock", "save"]

#: Bumped when :class:`Checkpoint` changes shape; an older file is refused, with the reason.
CHECKPOINT_VERSION = 1


@dataclass
class Checkpoint:
    """One learner's state at one moment between batches."""

    model_id: str
    #: The deployment's topic prefix: offsets of another deployment's topics mean nothing.
    prefix: str
    model: Any
    store: FeatureStore
    #: Per partition: the next offset of ``<prefix>.labels`` to read.
    labels_next: dict[int, int] = field(default_factory=dict)
    #: Per partition: the offset after the last request whose features the store holds
    #: (a restart reads the requests scored after it again, to refill the store).
    requests_next: dict[int, int] = field(default_factory=dict)
    #: Pairs matched but not learned yet, waiting for the scoring to pass their label's
    #: event time: (label ms, features, target).
    held: list[tuple[int, Any, Any]] = field(default_factory=list)
    #: Pairs learned without error, and ``learn_one`` calls that raised or ran past the
    #: budget, since the learner began (across restarts).
    learned: int = 0
    learn_errors: int = 0
    learn_timeouts: int = 0
    #: Checkpoints written before this one, restarts restored from one.
    saves: int = 0
    restores: int = 0
    version: int = CHECKPOINT_VERSION


def checkpoint_path(state_dir: Path, model_id: str) -> Path:
    """The file of ``model_id``'s checkpoint (its id made safe as a file name)."""
    safe = re.sub(r"[^A-Za-z0-9._@-]", "_", model_id)
    return Path(state_dir) / f"learner-{safe}.pkl"


def lock(path: Path) -> int:
    """Hold ``path``'s lock file (``.lock`` beside it) for this process; a file descriptor
    to close to release it. Two workers given one state directory would overwrite each
    other's checkpoint with models that learned different labels: the second is refused."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise CheckpointError(f"cannot use the state directory {path.parent}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise CheckpointError(
            f"{path} is in use by another running worker: give each worker its own --state-dir"
        ) from None
    return fd


def save(path: Path, data: bytes) -> None:
    """Replace the checkpoint at ``path`` with ``data`` (a pickled :class:`Checkpoint`)
    atomically: after a crash the file holds the old checkpoint or the new one."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a power cut
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise CheckpointError(f"cannot write the learner checkpoint {path}: {exc}") from exc


def load(path: Path, model_id: str, prefix: str) -> Checkpoint | None:
    """The checkpoint at ``path``, or None when there is none yet.

    Refused (:class:`CheckpointError`, the worker does not start): a file that does not
    unpickle, is not a checkpoint of this version, or belongs to another model id or
    prefix. Refusing is safer than starting from the spec's model and overwriting what was
    learned: the operator deletes the file to start over.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            ckpt = pickle.load(fh)
    except FileNotFoundError:
        return None
    except Exception as exc:
        raise CheckpointError(
            f"cannot read the learner checkpoint {path}: {type(exc).__name__}: {exc} "
            "(delete it to start again from the spec's model)"
        ) from exc
    if not isinstance(ckpt, Checkpoint) or getattr(ckpt, "version", None) != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} is not a version-{CHECKPOINT_VERSION} learner checkpoint (delete it to "
            "start again from the spec's model)"
        )
    if ckpt.model_id != model_id or ckpt.prefix != prefix:
        raise CheckpointError(
            f"{path} holds the state of {ckpt.model_id!r} on prefix {ckpt.prefix!r}, not of "
            f"{model_id!r} on {prefix!r}"
        )
    return ckpt
