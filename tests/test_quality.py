"""
The code-quality gates, run with the tests so that the README's one test
command checks them too: ruff (lint) and mypy (types, with mypy-zope).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


class QualityTests(SynchronousTestCase):
    def test_ruff(self) -> None:
        if shutil.which("ruff") is None:
            raise self.skipTest("ruff is not installed (pip install '.[test]')")
        result = _run("ruff", "check", "akoutpost", "tests", "twisted", "setup.py")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_mypy(self) -> None:
        try:
            import mypy  # noqa: F401
            import mypy_zope  # noqa: F401
        except ImportError:
            raise self.skipTest("mypy and mypy-zope are not installed (pip install '.[test]')") from None
        result = _run(sys.executable, "-m", "mypy", "akoutpost")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
