# -*- test-case-name: tests.test_demo -*-
"""
C{twistd akoutpost --demo}: everything needed to see an outpost work, on
127.0.0.1 only.

A development OpenID provider with two demo users, an echo application that
shows the headers it receives, and one outpost in proxy mode protecting it,
all in one reactor.  The outpost's metrics are on the port after the echo
application's.  The provider lives in L{akoutpost.testing} and is never
started except here or by a test.
"""

from __future__ import annotations

import secrets
import sys
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.web.server import Site

from akoutpost.config import parseConfig
from akoutpost.service import AkOutpostService
from akoutpost.testing import DEMO_USERS, ClientRegistration, DevelopmentProvider, EchoApplication

DEMO_CLIENT_ID = "akoutpost-demo"


def demoConfig(port: int, clientSecret: str) -> dict[str, Any]:
    """
    The config (as parsed TOML) of the demo outpost.
    """
    return {
        "outposts": {
            "demo": {
                "name": "akoutpost demo outpost",
                "http": f"tcp:{port}:interface=127.0.0.1",
                "https": "",
                "metrics": f"tcp:{port + 3}:interface=127.0.0.1",
                "providers": [
                    {
                        "name": "demo",
                        "app_slug": "echo",
                        "mode": "proxy",
                        "external_host": f"http://127.0.0.1:{port}",
                        "internal_host": f"http://127.0.0.1:{port + 2}",
                        "issuer": f"http://127.0.0.1:{port + 1}/application/o/demo/",
                        "client_id": DEMO_CLIENT_ID,
                        "client_secret": clientSecret,
                        "skip_path_regex": "^/public/",
                        "access_token_validity": 3600,
                    }
                ],
            }
        }
    }


class DemoService(MultiService):
    """
    The demo: provider, echo application and outpost.
    """

    def __init__(self, reactor: Any, port: int = 9000, out: Any = None) -> None:
        super().__init__()
        self.port = port
        self.out = out if out is not None else sys.stdout
        clientSecret = secrets.token_urlsafe(32)
        config = parseConfig(demoConfig(port, clientSecret))
        provider = config.outposts[0].providers[0]
        self.provider = DevelopmentProvider(
            provider.issuer,
            [
                ClientRegistration(
                    DEMO_CLIENT_ID,
                    clientSecret,
                    (f"{provider.external_host}/outpost.goauthentik.io/callback?X-authentik-auth-callback=true",),
                )
            ],
            reactor,
        )
        for listenPort, site in ((port + 1, Site(self.provider.resource())), (port + 2, Site(EchoApplication()))):
            service = StreamServerEndpointService(TCP4ServerEndpoint(reactor, listenPort, interface="127.0.0.1"), site)
            service._raiseSynchronously = True
            service.setServiceParent(self)
        self.outposts = AkOutpostService(config, reactor)
        self.outposts.setServiceParent(self)

    def startService(self) -> None:
        super().startService()
        api = next(u for u in DEMO_USERS if u.appPassword)
        users = "\n".join(f"    {u.username} / {u.password}   (groups: {', '.join(u.groups)})" for u in DEMO_USERS)
        self.out.write(
            f"""
akoutpost demo: open http://127.0.0.1:{self.port}/ in a browser and sign in as
{users}
  The development OpenID provider runs on 127.0.0.1:{self.port + 1} and the echo
  application on 127.0.0.1:{self.port + 2}; /public/ is reachable without login,
  /outpost.goauthentik.io/sign_out signs out. Prometheus metrics are on
  http://127.0.0.1:{self.port + 3}/metrics. API clients can use an app
  password instead of a login: curl -u {api.username}:{api.appPassword} http://127.0.0.1:{self.port}/
  Not for production.
"""
        )
        self.out.flush()
