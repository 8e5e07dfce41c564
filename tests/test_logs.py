"""
Tests for L{akoutpost.logs}: the JSON-lines observer for log collectors.
"""

from __future__ import annotations

import io
import json

from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from akoutpost.logs import jsonLines


class JSONLinesTests(SynchronousTestCase):
    def test_oneObjectPerEventWithFields(self) -> None:
        out = io.StringIO()
        log = Logger(namespace="akoutpost.application.Application", observer=jsonLines(out))
        log.info("{provider}: {user} signed in", provider="wiki", user="alice")
        log.warn("{provider}: login failed: {reason}", provider="wiki", reason="token endpoint answered 400")
        log.debug("not written")
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        first, second = (json.loads(line) for line in lines)
        self.assertEqual((first["provider"], first["user"]), ("wiki", "alice"))
        self.assertEqual(first["log_namespace"], "akoutpost.application.Application")
        self.assertEqual(first["log_level"]["name"], "info")
        self.assertEqual(second["reason"], "token endpoint answered 400")
        self.assertEqual(second["log_level"]["name"], "warn")

    def test_twistdLoggerOption(self) -> None:
        """
        The option value twistd takes is an importable zero-argument factory.
        """
        from twisted.python.reflect import namedAny

        observer = namedAny("akoutpost.logs.jsonLines")()
        self.assertTrue(callable(observer))
