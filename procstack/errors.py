"""The error the command line prints as a one-line message: something about the stack, its
declaration or this machine that the user can act on (anything else is a bug and shows its
traceback)."""

from __future__ import annotations


class StackError(RuntimeError):
    pass
