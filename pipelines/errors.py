"""The two failures a person acts on, shared by every floor: a stage that refused to go on, and a params.yaml
that must be fixed. The CLI turns both into one red line and exit code 2, never a traceback."""
from __future__ import annotations


class ConfigError(ValueError):
    """A problem in params.yaml that a person must fix; the message names the dotted key."""


class StageFailed(RuntimeError):
    """A stage or gate refused to go on; the message says what failed and where the report is."""
