"""Which exceptions are a user's mistake (a bad config, path, option or folder) rather than a bug.

The CLI (`metaserve.cli.main`) prints these as one sentence with exit code 2 and no traceback;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import yaml

from metaserve.config import ConfigError


class UsageError(ValueError):
    """A command-line value or a folder given to a command cannot be used; the message says which and why."""


# ValueError covers ConfigError, JobsError and UsageError; OSError covers missing or unreadable files.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, UsageError, ValueError, OSError, yaml.YAMLError)


def one_sentence(err: BaseException) -> str:
    """The error's message on one line (a multi-line list of bad keys joined with '; ')."""
    text = str(err).strip() or type(err).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        return lines[0] + " " + "; ".join(lines[1:])
    return "; ".join(lines)


def check_count(option: str, value: int | None, low: int = 1) -> None:
    """UsageError unless `value` is None or an integer >= `low` (for --episodes, --steps, ...)."""
    if value is not None and value < low:
        raise UsageError(f"{option} {value} is not allowed: give an integer >= {low}")
