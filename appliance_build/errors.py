"""Errors the pipeline reports to people (never a traceback for bad input)."""


class BuildError(Exception):
    """A build step failed; the message says what and what to do."""


class ConfigError(BuildError):
    """An image definition or a command-line value is invalid."""
