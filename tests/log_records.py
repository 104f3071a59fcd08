"""Collecting a logger's records in a test (a handler of its own: the project's loggers may not propagate to
pytest's ``caplog``)."""

import contextlib
import logging
from typing import Iterator, List


@contextlib.contextmanager
def log_records(name: str, level: int = logging.INFO) -> Iterator[List[logging.LogRecord]]:
    """Yields the list that receives the records of logger ``name`` at ``level`` and above while the block runs."""
    logger = logging.getLogger(name)
    records: List[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
