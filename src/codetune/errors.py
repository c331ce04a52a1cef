"""The one exception type for mistakes a user can make."""

from __future__ import annotations


class CodetuneError(Exception):
    """A user-facing error: bad file, bad field, model not found, too-long example.

    The message names the file, line or field and says what to do. The CLI prints it without a
    traceback and exits with status 2.
    """
