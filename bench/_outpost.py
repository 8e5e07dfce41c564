"""
A real C{twistd akoutpost} process for the benchmarks, from a generated TOML
config: every listener on 127.0.0.1, no HTTPS and no metrics listener (the
defaults would listen on every interface).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from _processes import BENCH, Processes, waitForPort


@dataclass(frozen=True)
class Provider:
    """
    One provider of a benchmark outpost.

    @ivar externalHost: C{http://host:port}; the host may be a made-up name,
        requests still go to 127.0.0.1.
    """

    name: str
    externalHost: str
    clientId: str
    mode: str = "proxy"
    internalHost: str = ""
    skipPathRegex: str = ""

    @property
    def cookieName(self) -> str:
        # As akoutpost.config.ProviderConfig.cookieName (authentik's rule).
        return "authentik_proxy_" + hashlib.sha256(self.clientId.encode("utf-8")).hexdigest()[:8]

    @property
    def redirectUri(self) -> str:
        return f"{self.externalHost}/outpost.goauthentik.io/callback?X-authentik-auth-callback=true"


@dataclass(frozen=True)
class Outpost:
    key: str
    port: int
    providers: Sequence[Provider] = field(default_factory=tuple)


def _string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def configText(outposts: Sequence[Outpost], issuer: str, secret: str = "bench-secret") -> str:
    """
    The TOML config of C{outposts}, every provider using C{issuer} and the
    client secret C{secret}.
    """
    lines: list[str] = []
    for outpost in outposts:
        lines += [
            f"[outposts.{outpost.key}]",
            f'http = "tcp:{outpost.port}:interface=127.0.0.1"',
            'https = ""',
            'metrics = ""',
            'trusted_proxies = ["127.0.0.0/8", "::1/128"]',
            "",
        ]
        for provider in outpost.providers:
            lines += [
                f"[[outposts.{outpost.key}.providers]]",
                f"name = {_string(provider.name)}",
                f"mode = {_string(provider.mode)}",
                f"external_host = {_string(provider.externalHost)}",
                f"issuer = {_string(issuer)}",
                f"client_id = {_string(provider.clientId)}",
                f"client_secret = {_string(secret)}",
            ]
            if provider.internalHost:
                lines.append(f"internal_host = {_string(provider.internalHost)}")
            if provider.skipPathRegex:
                lines.append(f"skip_path_regex = {_string(provider.skipPathRegex)}")
            lines.append("")
    return "\n".join(lines)


def twistdArgv(config: str, logfile: str, python: Sequence[str] = ()) -> list[str]:
    """
    The command line of C{twistd -n akoutpost --config CONFIG}.

    @param python: Interpreter options placed before the twistd script, such as
        C{["-m", "cProfile", "-o", "FILE"]}.
    """
    return [
        sys.executable,
        *python,
        os.path.join(BENCH, "_twistd.py"),
        "-n",
        "--pidfile=",
        f"--logfile={logfile}",
        "akoutpost",
        "--config",
        config,
    ]


def start(
    processes: Processes,
    workdir: str,
    name: str,
    outposts: Sequence[Outpost],
    issuer: str,
    cpu: str | None,
    python: Sequence[str] = (),
    wait: bool = True,
) -> subprocess.Popen[bytes]:
    """
    Write C{<workdir>/<name>.toml} and start twistd on it; wait until every
    outpost listens (unless C{wait} is false).
    """
    config = os.path.join(workdir, f"{name}.toml")
    with open(config, "w") as f:
        f.write(configText(outposts, issuer))
    argv = twistdArgv(config, os.path.join(workdir, f"{name}.log"), python)
    process = processes.start(argv, cpu=cpu, cwd=workdir, log=os.path.join(workdir, f"{name}.out"))
    if wait:
        for outpost in outposts:
            waitForPort(outpost.port, 60, process)
    return process
