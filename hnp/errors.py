"""The one exception type the CLI turns into a clean message instead of a traceback."""

from __future__ import annotations


class HnpError(Exception):
    """A problem with the user's input or environment, worded for the user: it names the file, row or key."""
