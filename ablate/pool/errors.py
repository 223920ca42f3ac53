"""Errors a user can cause and fix; the CLI prints them as one line, without a traceback."""

from __future__ import annotations


class AblateError(Exception):
    """A problem with the user's input or on-disk state; the message names the fix."""


class PoolError(AblateError):
    """The pool folder, its manifest or one of its members is unusable."""


class DataError(AblateError):
    """A corpus or eval file cannot be read or partitioned as asked."""


class CorruptMemberError(PoolError):
    """A member's weights do not match the sha256 recorded when it was written."""
