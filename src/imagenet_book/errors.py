"""The one base class of the package's user-facing errors.

Every error the package raises for something a user can fix (a missing dataset, a damaged
checkpoint, a wrong setting) derives from :class:`BookError` as well as from the built-in class
that fits it (``ValueError``, ``FileNotFoundError``, ...). So a notebook can catch them all with
``except ib.errors.BookError``, existing ``except ValueError`` code keeps working, and the command
line prints the message of any of them as one line instead of a traceback.

This module imports nothing from the package: every other module may import it.
"""

from __future__ import annotations

__all__ = ["BookError"]


class BookError(Exception):
    """An error whose message says what went wrong, with which file or setting, and the fix.

    Subclasses also derive from a built-in exception (``class DatasetNotFoundError(BookError,
    FileNotFoundError)``), so both ``except BookError`` and the built-in class catch them.

    Taught in: README.md (For contributors).
    """
