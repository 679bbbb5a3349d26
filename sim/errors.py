"""The user-facing error type: one line naming the file, the dotted key and what was expected.

It sits at the bottom of ``sim``'s dependency order (errors <- config <- ...), so that any
module can raise it without importing the config dataclasses.
"""
from __future__ import annotations


class ConfigError(ValueError):
    """A configuration problem, with the file, the dotted key and what was expected."""

    def __init__(self, key: str, message: str, source: str | None = None):
        self.key = key
        self.source = source
        self.message = message
        where = f"{source}: " if source else ""
        keytxt = f"key '{key}': " if key else ""
        super().__init__(f"{where}{keytxt}{message}")

    def with_source(self, source: str) -> "ConfigError":
        return ConfigError(self.key, self.message, source)

