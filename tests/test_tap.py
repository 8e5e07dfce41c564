"""
Tests for the C{twistd akoutpost} plugin and L{akoutpost.tap}: the plugin is
found and imports no reactor, the options reject bad command lines and bad
config files before anything listens, and real C{twistd} processes start,
serve and stop.
"""

from __future__ import annotations

import base64
import io
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from urllib.parse import parse_qs, urlsplit

from twisted.application.service import IServiceMaker, MultiService
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError, ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.internet.task import deferLater
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from akoutpost.service import OutpostService
from akoutpost.tap import Options, makeService

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Runs twistd like its console script does; C{python -m twisted.scripts.twistd}
#: has no C{__main__} block and silently does nothing.
TWISTD = [sys.executable, "-c", "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"]

PROVIDER = """
[[outposts.{key}.providers]]
name = "{key}-app"
external_host = "https://{key}.example.com"
internal_host = "http://127.0.0.1:8080"
issuer = "https://id.example.com/application/o/{key}/"
client_id = "client-{key}"
client_secret = "secret-{key}"
"""

BAD_CONFIG = """
[outposts.main]
http = "tcp:{port}:interface=127.0.0.1"

[[outposts.main.providers]]
name = "app"
external_host = "https://app.example.com"
internal_host = "http://127.0.0.1:8080"
issuer = "https://id.example.com/application/o/app/"
client_secret = "secret"
colour = "blue"
"""

#: The two problems of L{BAD_CONFIG}, as the user is told about them.
BAD_CONFIG_PROBLEMS = (
    "outpost 'main', provider 'app' (#1), field 'colour': unknown field",
    "outpost 'main', provider 'app' (#1), field 'client_id': required",
)


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": ROOT}


def freePorts(count: int) -> int:
    """
    A port P on 127.0.0.1 such that P to P + count - 1 are all free just now.
    """
    for _ in range(100):
        sockets = []
        try:
            first = socket.socket()
            sockets.append(first)
            first.bind(("127.0.0.1", 0))
            base = first.getsockname()[1]
            if base + count > 65536:
                continue
            for offset in range(1, count):
                extra = socket.socket()
                sockets.append(extra)
                extra.bind(("127.0.0.1", base + offset))
            return int(base)
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise AssertionError(f"no {count} consecutive free ports found")


def writeFile(path: str, text: str) -> str:
    """
    Write C{text} to C{path}; return its absolute path.
    """
    with open(path, "w", encoding="utf-8") as f:
        f.write(textwrap.dedent(text))
    return os.path.abspath(path)


class PluginTests(SynchronousTestCase):
    def test_pluginFound(self) -> None:
        self.assertIn("akoutpost", {p.tapname for p in getPlugins(IServiceMaker)})

    def test_pluginImportsNoReactor(self) -> None:
        """
        twistd imports every plugin module before it applies C{--reactor}, so
        importing ours must not install one.
        """
        code = (
            "import sys\n"
            "import twisted.plugins.akoutpost_plugin as plugin\n"
            "assert plugin.akoutpost.tapname == 'akoutpost'\n"
            "assert 'twisted.internet.reactor' not in sys.modules, 'a reactor was installed'\n"
            "print('ok')\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=30
        )
        self.assertEqual((result.returncode, result.stdout.strip()), (0, "ok"), result.stderr)


class OptionsTests(SynchronousTestCase):
    def test_neitherConfigNorDemo(self) -> None:
        error = self.assertRaises(usage.UsageError, Options().parseOptions, [])
        self.assertIn("--config", str(error))
        self.assertIn("--demo", str(error))

    def test_bothConfigAndDemo(self) -> None:
        path = writeFile(self.mktemp(), BAD_CONFIG.format(port=9000))
        error = self.assertRaises(usage.UsageError, Options().parseOptions, ["--config", path, "--demo"])
        self.assertIn("--config", str(error))
        self.assertIn("--demo", str(error))

    def test_badConfigFile(self) -> None:
        """
        A bad config file ends the process with a non-zero status and one
        line per problem, each naming the outpost, the provider and the field.
        """
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        path = writeFile(self.mktemp(), BAD_CONFIG.format(port=9000))
        error = self.assertRaises(SystemExit, Options().parseOptions, ["--config", path])
        self.assertNotIn(error.code, (None, 0))
        output = stderr.getvalue()
        self.assertIn(path, output)
        for problem in BAD_CONFIG_PROBLEMS:
            self.assertIn(problem, output)

    def test_goodConfigFile(self) -> None:
        path = writeFile(self.mktemp(), "[outposts.main]\nhttp = 'tcp:0'\n" + PROVIDER.format(key="main"))
        options = Options()
        options.parseOptions(["--config", path])
        assert options.parsed is not None
        self.assertEqual([o.key for o in options.parsed.outposts], ["main"])

    def test_demoPort(self) -> None:
        options = Options()
        options.parseOptions(["--demo", "--demo-port", "9100"])
        self.assertEqual((options["demo"], options["demo-port"]), (True, 9100))


class MakeServiceTests(SynchronousTestCase):
    def test_outpostsAreNamedChildren(self) -> None:
        """
        C{makeService} builds, without starting anything, one named child
        service per outpost of the file.
        """
        text = ""
        for key in ("main", "other"):
            text += f'[outposts.{key}]\nhttp = "tcp:0:interface=127.0.0.1"\n' + PROVIDER.format(key=key)
        options = Options()
        options.parseOptions(["--config", writeFile(self.mktemp(), text)])
        service = makeService(options)
        self.assertIsInstance(service, MultiService)
        for key in ("main", "other"):
            child = service.getServiceNamed(key)  # type: ignore[attr-defined]
            self.assertIsInstance(child, OutpostService)
            self.assertEqual(child.config.key, key)
            self.assertFalse(child.running)
        self.assertFalse(service.running)

    def test_configFileReadAgainOnSighup(self) -> None:
        """
        The service is told where its file is (an absolute path, whatever
        directory the process is in later), so that SIGHUP reads it again.
        """
        path = self.mktemp()
        writeFile(path, '[outposts.main]\nhttp = "tcp:0:interface=127.0.0.1"\n' + PROVIDER.format(key="main"))
        options = Options()
        options.parseOptions(["--config", path])
        service = makeService(options)
        self.assertEqual(service.configPath, os.path.abspath(path))  # type: ignore[attr-defined]
        self.assertIsNotNone(service.reloader)  # type: ignore[attr-defined]

    def test_demoHasNoFileToReadAgain(self) -> None:
        options = Options()
        options.parseOptions(["--demo", "--demo-port", "9100"])
        service = makeService(options)
        self.assertIsNone(service.outposts.reloader)  # type: ignore[attr-defined]


class Twistd(ProcessProtocol):
    """
    A twistd child process: its output so far and a Deferred that fires with
    the L{ProcessDone} or L{ProcessTerminated} it ended with.
    """

    def __init__(self) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.ended: defer.Deferred[ProcessDone | ProcessTerminated] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(reason.value)  # type: ignore[arg-type]

    def output(self) -> str:
        return (bytes(self.out) + bytes(self.err)).decode("utf-8", "replace")


class TwistdTests(TestCase):
    """
    Real C{twistd -n akoutpost} processes.
    """

    timeout = 120

    def twistd(self, *args: str) -> Twistd:
        """
        Start C{twistd -n --pidfile= akoutpost ARGS}; it is killed after the
        test if it is still running.
        """
        process = Twistd()
        cwd = self.mktemp()
        os.makedirs(cwd)
        transport = reactor.spawnProcess(
            process, sys.executable, TWISTD + ["-n", "--pidfile=", "akoutpost", *args], env=environment(), path=cwd
        )

        async def kill() -> None:
            if not process.ended.called:
                transport.signalProcess("KILL")
                await process.ended.addTimeout(30, reactor)

        self.addCleanup(lambda: defer.Deferred.fromCoroutine(kill()))
        return process

    async def assertRefused(self, port: int) -> None:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)
        await self.assertFailure(connectProtocol(endpoint, Protocol()), ConnectionRefusedError)

    async def test_badConfigExitsBeforeListening(self) -> None:
        port = freePorts(1)
        path = writeFile(self.mktemp(), BAD_CONFIG.format(port=port))
        process = self.twistd("--config", path)
        ended = await process.ended.addTimeout(30, reactor)
        self.assertNotIn(ended.exitCode, (None, 0), process.output())
        for problem in BAD_CONFIG_PROBLEMS:
            self.assertIn(problem, process.output())
        await self.assertRefused(port)

    async def test_demo(self) -> None:
        """
        The demo answers its ping and sends browsers to the login start,
        serves its metrics on the fourth port, prints how to use it, and
        stops cleanly on SIGTERM.
        """
        port = freePorts(4)
        process = self.twistd("--demo", f"--demo-port={port}")
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        agent = Agent(reactor, pool=pool)
        base = f"http://127.0.0.1:{port}"

        async def get(path: str, headers: dict[bytes, list[bytes]] | None = None) -> tuple[IResponse, bytes]:
            d = agent.request(b"GET", (base + path).encode("ascii"), Headers(headers or {}))
            response = await d.addTimeout(10, reactor)
            return response, await readBody(response).addTimeout(10, reactor)

        deadline = time.monotonic() + 20
        while True:
            if process.ended.called:
                self.fail(f"twistd ended early:\n{process.output()}")
            try:
                response, _ = await get("/outpost.goauthentik.io/ping")
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    self.fail(f"the demo did not listen within 20 s:\n{process.output()}")
                await deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(response.code, 204)

        response, _ = await get("/", {b"accept": [b"text/html"]})
        self.assertEqual(response.code, 302)
        location = response.headers.getRawHeaders(b"location", [b""])[0].decode("ascii")
        start = base + "/outpost.goauthentik.io/start?rd="
        self.assertTrue(location.startswith(start), location)
        self.assertEqual(parse_qs(urlsplit(location).query)["rd"], [base + "/"])

        output = process.out.decode("utf-8", "replace")
        self.assertIn(base + "/", output)
        self.assertIn("akadmin", output)
        metrics = f"http://127.0.0.1:{port + 3}/metrics"
        self.assertIn(metrics, output)
        response = await agent.request(b"GET", metrics.encode("ascii")).addTimeout(10, reactor)
        body = await readBody(response).addTimeout(10, reactor)
        self.assertEqual(response.code, 200)
        self.assertIn(b'akoutpost_logins_total{outpost_name="akoutpost demo outpost",provider="demo"} 0.0', body)

        # The app password the demo prints signs an API client in.
        match = re.search(r"curl -u (\S+):(\S+) ", output)
        assert match is not None, output
        credentials = base64.b64encode(f"{match[1]}:{match[2]}".encode()).decode("ascii")
        response, body = await get("/api", {b"authorization": [f"Basic {credentials}".encode("ascii")]})
        self.assertEqual(response.code, 200, body)
        self.assertIn(f'["X-Authentik-Username", "{match[1]}"]'.encode(), body)

        await pool.closeCachedConnections()
        os.kill(process.transport.pid, signal.SIGTERM)  # type: ignore[union-attr]
        ended = await process.ended.addTimeout(10, reactor)
        # After stopping its services twistd re-raises the signal it was
        # stopped by (twisted.application.app._exitWithSignal).
        self.assertIn(ended.signal, (None, signal.SIGTERM), process.output())
        self.assertIn(ended.exitCode, (None, 0), process.output())
        self.assertIn("Server Shut Down.", process.output())
        await self.assertRefused(port)
