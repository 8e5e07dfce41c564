# -*- test-case-name: tests.integration.test_npmprovider -*-
"""
Run a real, certified OpenID provider (npm C{oidc-provider}) for
interoperability tests.

The provider is C{oidc_provider/server.mjs} beside this module, run by node
with a JSON configuration (see that file for its keys).  Install it with
C{npm ci --prefix tests/integration/oidc_provider}; tests skip themselves
with the reason from L{npmProviderAvailable} when it is missing.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, TimeoutError, fail
from twisted.internet.interfaces import IProcessTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath

from .fronts._process import FrontProcess, ProcessOutput, spawnProcess

__all__ = [
    "NODE_DIR",
    "NpmProvider",
    "ProviderStartError",
    "npmProviderAvailable",
    "startNpmProvider",
]

NODE_DIR: FilePath[str] = FilePath(__file__).sibling("oidc_provider")

START_TIMEOUT = 30.0
#: Starts tried before giving up (see startNpmProvider).
START_ATTEMPTS = 2
STOP_TIMEOUT = 5.0

_log = Logger()
_configNumbers = itertools.count()


def npmProviderAvailable() -> str | None:
    """
    L{None} if the provider can run here, else why not (for C{skip}).
    """
    if shutil.which("node") is None:
        return "node is not installed"
    if not NODE_DIR.descendant(["node_modules", "oidc-provider", "package.json"]).exists():
        return f"oidc-provider is not installed; run npm ci --prefix {NODE_DIR.path}"
    return None


class ProviderStartError(Exception):
    """
    The provider exited or stayed silent instead of saying C{READY}.
    """


class _ProviderProtocol(ProcessOutput):
    """
    Waits for the C{READY <port>} line and keeps the end of standard error
    (only) as the output.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ready: Deferred[int] = Deferred()
        self._stdout = b""

    def outReceived(self, data: bytes) -> None:
        self._stdout += data
        while b"\n" in self._stdout:
            line, self._stdout = self._stdout.split(b"\n", 1)
            words = line.split()
            if len(words) == 2 and words[0] == b"READY" and not self.ready.called:
                self.ready.callback(int(words[1]))

    def processEnded(self, reason: Failure) -> None:
        if not self.ready.called:
            self.ready.errback(
                ProviderStartError(
                    f"oidc-provider exited before it was ready ({reason.value}):\n"
                    + self.output.decode("utf-8", "replace")
                )
            )
        super().processEnded(reason)


@dataclass
class NpmProvider:
    """
    A running provider.

    @ivar issuer: its issuer URL; discovery is at
        C{issuer + "/.well-known/openid-configuration"}.
    """

    port: int
    issuer: str
    process: IProcessTransport
    _runner: FrontProcess = field(repr=False)

    @property
    def stderr(self) -> str:
        """
        What the provider wrote to standard error lately, for diagnostics.
        """
        return self._runner.output

    def stop(self) -> Deferred[None]:
        """
        SIGTERM, then SIGKILL if it is still there after five seconds.
        """
        return Deferred.fromCoroutine(self._runner.stop())


def startNpmProvider(reactor: Any, config: dict[str, Any], tmpdir: str) -> Deferred[NpmProvider]:
    """
    Start the provider and wait until it listens.

    @param reactor: an C{IReactorProcess} and C{IReactorTime}.
    @param config: the JSON configuration of C{server.mjs}; C{port} defaults
        to 0 (a free port), and the provider exits if this process dies.
    @param tmpdir: a directory for the configuration file.
    @return: fires with the running L{NpmProvider}, or fails with
        L{ProviderStartError} (carrying the provider's standard error).
    """
    reason = npmProviderAvailable()
    if reason is not None:
        return fail(ProviderStartError(reason))
    node = shutil.which("node")
    assert node is not None
    config = {"port": 0, "exitWithStdin": True, **config}
    configPath = FilePath(tmpdir).child(f"oidc-provider-{next(_configNumbers)}.json")
    configPath.setContent(json.dumps(config).encode("utf-8"))

    issuerPath = config.get("issuerPath", "")

    async def attempt() -> NpmProvider:
        protocol = _ProviderProtocol()
        runner = spawnProcess(
            reactor,
            "oidc-provider",
            [node, NODE_DIR.child("server.mjs").path, configPath.path],
            cwd=NODE_DIR.path,
            protocol=protocol,
            configFiles=(configPath.path,),
        )
        try:
            port = await protocol.ready.addTimeout(START_TIMEOUT, reactor)
        except TimeoutError:
            error = ProviderStartError(f"oidc-provider was not ready after {START_TIMEOUT} s:\n" + runner.output)
            runner.signal("KILL")
            # Reap it, so that a failing test still leaves a clean reactor.
            await runner.waitForExit(STOP_TIMEOUT)
            raise error from None
        return NpmProvider(port, f"http://127.0.0.1:{port}{issuerPath}", runner.transport, runner)

    async def started() -> NpmProvider:
        # node normally answers in about a second; twice in fresh-clone CI
        # runs it printed its start-up warning and then nothing (a hang,
        # not slowness: 60 s did not help).  One more start, logged.
        for remaining in range(START_ATTEMPTS - 1, -1, -1):
            try:
                return await attempt()
            except ProviderStartError as e:
                if remaining == 0 or "not ready after" not in str(e):
                    raise
                _log.warn("oidc-provider hung while starting; starting it again: {error}", error=str(e))
        raise AssertionError("unreachable")

    return Deferred.fromCoroutine(started())


async def startWithNpmProvider(
    testCase: Any,
    stack: Any,
    prefix: str,
    users: list[dict[str, Any]],
    *,
    extraRedirectUris: tuple[str, ...] = (),
    client: Callable[[str], dict[str, Any]] = lambda name: {},
    **config: Any,
) -> tuple[NpmProvider, dict[str, tuple[str, str]]]:
    """
    Start the npm provider with one confidential client per provider of
    C{stack} (an L{tests.integration._stack.OutpostStack}), then the stack
    against it; the provider is stopped in C{testCase}'s cleanup.

    @param prefix: Starts every client id and secret.
    @param client: Extra client metadata for the provider called C{name}.
    @param config: Extra keys of C{server.mjs}'s configuration.
    @return: The provider, and each provider's client id and secret by name.
    """
    from ._stack import PROVIDERS, redirectUri

    tmpdir = testCase.mktemp()
    os.mkdir(tmpdir)
    clients = {name: (f"{prefix}-{name}", f"{prefix}-secret-{name}-0123456789") for name in PROVIDERS}
    provider: NpmProvider = await startNpmProvider(
        _reactor,
        {
            "issuerPath": "/oidc",
            "clients": [
                {
                    "client_id": clientId,
                    "client_secret": secret,
                    "redirect_uris": [redirectUri(stack.external[name]), *extraRedirectUris],
                    "token_endpoint_auth_method": "client_secret_basic",
                    **client(name),
                }
                for name, (clientId, secret) in clients.items()
            ],
            "users": users,
            **config,
        },
        tmpdir,
    )
    testCase.addCleanup(provider.stop)
    await stack.start(provider.issuer, clients)
    return provider, clients
