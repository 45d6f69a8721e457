class StageFailed(RuntimeError):
    """A stage or gate refused to go on; the message says what failed and where the report is."""
