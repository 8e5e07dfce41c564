"""
Starting and stopping the benchmark's processes, on 127.0.0.1 only.

Every process a benchmark starts goes into a L{Processes} group, used as a
context manager: leaving it (normally, on an error or on Ctrl-C) stops each
process by its pid, SIGTERM first and SIGKILL if it does not exit.  Servers
can be pinned to a CPU with C{taskset}, so that the server under test and
the load generator do not fight for one core.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from types import TracebackType

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
LOOPBACK = "127.0.0.1"

#: The core of the server under test, and the core of everything else (the
#: load generator, the upstream, the OpenID provider).  On a machine with one
#: core, nothing is pinned.
SERVER_CPU = "0"
CLIENT_CPU = "1"


def canPin() -> bool:
    return shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


def pinned(cpu: str | None, argv: Sequence[str]) -> list[str]:
    """
    C{argv} run on core C{cpu} (with C{taskset}), or unpinned when C{cpu} is
    L{None} or pinning is impossible here.
    """
    if cpu is None or not canPin():
        return list(argv)
    return ["taskset", "-c", cpu, *argv]


def freePort() -> int:
    """
    A TCP port on 127.0.0.1 that nobody listens on right now.
    """
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def waitForPort(port: int, seconds: float = 30.0, process: subprocess.Popen[bytes] | None = None) -> float:
    """
    Wait until something accepts connections on 127.0.0.1:C{port}.

    @param process: The process expected to listen; if it exits first, fail
        at once instead of waiting the full time.
    @return: The seconds waited.
    """
    start = time.monotonic()
    deadline = start + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with status {process.returncode} before listening on {port}")
        try:
            socket.create_connection((LOOPBACK, port), timeout=1).close()
            return time.monotonic() - start
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listened on 127.0.0.1:{port} within {seconds} s")


def pythonEnv() -> dict[str, str]:
    """
    The environment of the Python processes started here: the checkout
    first on the path, so that twistd finds the akoutpost plugin.
    """
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": ROOT + (os.pathsep + path if path else "")}


def memoryKiB(pid: int, field: str = "VmRSS") -> int:
    """
    A memory figure of process C{pid} from C{/proc/<pid>/status}, in KiB
    (C{VmRSS}: resident now; C{VmHWM}: the resident peak).
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} for process {pid}")


def cpuSeconds(pid: int) -> float:
    """
    User plus system CPU seconds that process C{pid} has used so far.
    """
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def processTree(pid: int) -> list[int]:
    """
    C{pid} and its descendants (an nginx master and its worker).
    """
    pids = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(child) for child in f.read().split()]
    except OSError:
        children = []
    for child in children:
        pids += processTree(child)
    return pids


def treeCpuSeconds(pids: Sequence[int]) -> float:
    """
    The CPU seconds of C{pids} together.
    """
    return sum(cpuSeconds(pid) for pid in pids)


def resetPeakMemory(pid: int) -> None:
    """
    Reset C{VmHWM} of process C{pid} to its current resident size.
    """
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def stop(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """
    Stop C{process} by its pid: SIGTERM, then SIGKILL after C{grace} seconds.
    """
    if process.poll() is not None:
        return
    try:
        os.kill(process.pid, signal.SIGTERM)
        process.wait(grace)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(grace)
    except ProcessLookupError:
        pass


class Processes:
    """
    The processes a benchmark started; all stopped, newest first, when the
    C{with} block ends however it ends.
    """

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stopAll()

    def start(
        self,
        argv: Sequence[str],
        *,
        cpu: str | None = None,
        cwd: str | None = None,
        log: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """
        Start C{argv} (pinned to core C{cpu}), its output to file C{log} or
        thrown away.
        """
        out = open(log, "ab") if log is not None else subprocess.DEVNULL
        try:
            process = subprocess.Popen(
                pinned(cpu, argv),
                cwd=cwd or ROOT,
                env=env if env is not None else pythonEnv(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        finally:
            if log is not None:
                out.close()  # type: ignore[union-attr]
        self.running.append(process)
        return process

    def python(
        self, script: str, *args: str, cpu: str | None = None, log: str | None = None
    ) -> subprocess.Popen[bytes]:
        """
        Run one of the bench/ scripts with this interpreter.
        """
        return self.start([sys.executable, os.path.join(BENCH, script), *args], cpu=cpu, log=log)

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        stop(process)
        if process in self.running:
            self.running.remove(process)

    def stopAll(self) -> None:
        while self.running:
            process = self.running.pop()
            try:
                stop(process)
            except BaseException:
                # A second Ctrl-C while stopping: still kill the rest.
                for rest in [process, *self.running]:
                    if rest.poll() is None:
                        os.kill(rest.pid, signal.SIGKILL)
                raise


def readHead(s: socket.socket, size: int = 4096) -> bytes:
    """
    Read from C{s} until a whole HTTP response head has arrived; return all
    that was read (the head, and whatever of the body came with it).
    """
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = s.recv(size)
        if not chunk:
            raise RuntimeError("the connection closed before the response head")
        received += chunk
    return received
