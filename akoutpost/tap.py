# -*- test-case-name: tests.test_tap -*-
"""
The C{twistd akoutpost} command: its options and the service it builds.

The config file is read and checked while the options are parsed, so a bad
file ends the process with one line per problem before anything listens.
Its absolute path is handed to the service, which reads it again on SIGHUP.
"""

from __future__ import annotations

import gc
import os
import sys
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from akoutpost.config import Config, ConfigError, loadConfig


class Options(usage.Options):
    synopsis = "[--config FILE | --demo]"
    longdesc = (
        "Run authentik-style proxy outposts: every outpost of the config file, or a self-contained demo on 127.0.0.1."
    )
    optParameters = [
        ["config", "c", None, "The TOML config file describing the outposts."],
        ["demo-port", None, 9000, "Demo outpost port (provider, app and metrics on the next three).", int],
    ]
    optFlags = [["demo", None, "Run a demo: a development OpenID provider, an echo app and an outpost."]]

    parsed: Config | None = None

    def postOptions(self) -> None:
        if self["demo"] and self["config"]:
            raise usage.UsageError("Give either --config or --demo, not both.")
        if not self["demo"] and not self["config"]:
            raise usage.UsageError(
                "Nothing to run: pass --config FILE (see etc/akoutpost.toml) or --demo to try it out."
            )
        if self["config"]:
            try:
                self.parsed = loadConfig(self["config"])
            except ConfigError as e:
                sys.stderr.write(f"akoutpost: the config file {self['config']} has problems:\n")
                for problem in e.problems:
                    sys.stderr.write(f"  {problem}\n")
                sys.stderr.flush()
                raise SystemExit(2) from None


def makeService(options: Any) -> IService:
    from twisted.internet import reactor

    if options["demo"]:
        from akoutpost.demo import DemoService

        return DemoService(reactor, options["demo-port"])
    from akoutpost.service import AkOutpostService

    assert options.parsed is not None
    service = AkOutpostService(options.parsed, reactor, configPath=os.path.abspath(options["config"]))
    # Everything built so far (config, providers, modules) lives as long as
    # the process: keep it out of the garbage collector's full passes, which
    # would otherwise walk it again and again under load (tail latency).
    gc.collect()
    gc.freeze()
    return service
