"""Errors raised by the storage layer; each message names what failed."""
from __future__ import annotations


class StorageError(RuntimeError):
    """The database or image store could not do what was asked."""


class NotFoundError(StorageError, LookupError):
    """No row with the given id (inspection, model, training run, user)."""


class DatabaseBusyError(StorageError):
    """The database stayed locked/busy for longer than the retry window; nothing was written."""
