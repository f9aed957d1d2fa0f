"""Errors of the publishing step (exit code 2 from the command line, like every BuildError)."""

from __future__ import annotations

from ..errors import BuildError


class PublishError(BuildError):
    """Publishing cannot go on: missing input, invalid output or a refusal."""


class Refused(PublishError):
    """The image must not be published (untested, tested as another file, incomplete, corrupted)."""
