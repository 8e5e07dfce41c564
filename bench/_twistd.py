"""
C{twistd} as a script file, so that the outpost can be started with this
interpreter, or under C{python -m cProfile -o FILE bench/_twistd.py ...}.

One difference from the C{twistd} command: after SIGTERM it exits with
status 128 + the signal's number, instead of killing itself with the signal
again, so that a profiler wrapping it gets to write its file.
"""

import sys

from twisted.application import app
from twisted.scripts.twistd import run


def _exitWithStatus(number: int) -> None:
    sys.exit(128 + number)


if __name__ == "__main__":
    sys.argv[0] = "twistd"
    app._exitWithSignal = _exitWithStatus
    run()
