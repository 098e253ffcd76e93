"""The errors a user can cause. Each message is one line naming the problem and the fix; the
command line prints it as ``reglab: error: <message>`` and exits with status 2."""

from __future__ import annotations


class ReglabError(ValueError):
    """Base of every user-facing error (one line)."""

    def __init__(self, message: object = "") -> None:
        super().__init__(" ".join(str(message).split("\n")))


class ConfigError(ReglabError):
    """A bad setting, flag, preset or config file."""
