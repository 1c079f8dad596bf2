"""The one exception type for user mistakes.

Raise :class:`ConfigError` where a mistake is first detectable, with a message that
names the key, the bad value and the fix. Entry points turn it into a clean message
and a non-zero exit code; every other exception stays a real traceback (a bug for us).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConfigError(Exception):
    """A user mistake in configuration or input data, with a message that says how to fix it."""


def suggest(value: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ' Did you mean: a, b?' for the closest names in ``choices`` (or '' when none is close)."""
    close = difflib.get_close_matches(str(value), list(choices), n=n, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else ""
