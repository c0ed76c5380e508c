"""Logging filters named in settings.LOGGING."""

import logging


class OneLineClientErrors(logging.Filter):
    """A 4xx (a 403 for someone without the role) is the client's doing, not a fault of ours: one line, no
    traceback. 5xx keep theirs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "status_code", 500) < 500:
            record.exc_info = record.exc_text = None
        return True
