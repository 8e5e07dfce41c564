# -*- test-case-name: tests.test_logs -*-
"""
Log observers for twistd's C{--logger} option.

    twistd -n --logger=akoutpost.logs.jsonLines akoutpost --config FILE

writes one JSON object per event to standard output, with the event's
structured fields (outpost, provider, user, reason, ...) as they were logged,
for log collectors.  Events below C{info} are left out.
"""

from __future__ import annotations

import sys
from typing import IO

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    jsonFileLogObserver,
)


def jsonLines(out: IO[str] | None = None) -> ILogObserver:
    """
    An observer writing JSON lines to C{out} (standard output by default).
    """
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
    return FilteringLogObserver(jsonFileLogObserver(out or sys.stdout, recordSeparator=""), [predicate])
