"""Exceptions raised by kielnet for bad user input.

Every error names *where* the problem is — the file, the field (column) and, where
it concerns one star, the star's id and row — so a user can fix the input without
reading a traceback through torch.
"""

from __future__ import annotations

__all__ = ["KielnetError", "InputError", "ConfigError", "BundleError", "UsageError", "RunMismatchError"]


class KielnetError(Exception):
    """Base class of kielnet's own errors."""


class InputError(KielnetError, ValueError):
    """An input table, file or column is unusable.

    Parameters
    ----------
    message
        What is wrong.
    source
        File path (or ``<memory>``) the input came from.
    field
        Column / field name concerned.
    star
        Star identifier concerned, if the problem is with one star.
    row
        Zero-based row index of that star in its file.
    """

    def __init__(self, message: str, *, source: str | None = None, field: str | None = None,
                 star: str | None = None, row: int | None = None) -> None:
        self.source, self.field, self.star, self.row = source, field, star, row
        where = []
        if source:
            where.append(f"file {source}")
        if field:
            where.append(f"field '{field}'")
        if star is not None:
            where.append(f"star {star}" + (f" (row {row})" if row is not None else ""))
        elif row is not None:
            where.append(f"row {row}")
        super().__init__(f"{message} [{', '.join(where)}]" if where else message)


class ConfigError(KielnetError, ValueError):
    """A configuration / preset file is invalid."""


class BundleError(KielnetError, ValueError):
    """A model bundle is incomplete, corrupt or incompatible."""


class UsageError(KielnetError, ValueError):
    """An option or argument is invalid (e.g. a non-positive chunk size, an output path
    that cannot be written, an output that would overwrite an input). Raised before
    any compute starts."""


class RunMismatchError(InputError):
    """A resumable work directory (training checkpoints, prediction parts) belongs to a
    different run: other input data, configuration, bundle or options. The message
    names what differs; start afresh with ``--fresh`` or choose another directory."""
