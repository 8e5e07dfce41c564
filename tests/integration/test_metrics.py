"""
Metrics over real sockets: two outposts on 127.0.0.1 (C{main} with a metrics
listener on a port of its own), the development OpenID provider and an echo
upstream; real logins, a sign-out, a forged callback and an upstream that is
down; then C{/metrics} is scraped over HTTP and its names, labels and values
checked.
"""

from __future__ import annotations

from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody

from akoutpost.testing import DEMO_USERS
from tests.test_metrics import FAMILIES, Scrape

from ._stack import CLIENTS, OutpostStack, freePort, listeningPort, reactor, startDevelopmentProvider

WAIT = 20.0


class MetricsOverHTTPTests(TestCase):
    timeout = 60

    async def setUp(self) -> None:  # type: ignore[override]
        self.stack = OutpostStack(self)
        self.provider, issuer = startDevelopmentProvider(self, self.stack.external)
        await self.stack.start(issuer, CLIENTS, metrics="tcp:0:interface=127.0.0.1")
        main = self.stack.service.outposts["main"]
        self.assertIsNone(self.stack.service.outposts["other"].metricsListener)
        assert main.metricsListener is not None
        self.metricsPort = await listeningPort(main.metricsListener, WAIT)
        self.agent = Agent(reactor)

    async def get(self, path: str, method: bytes = b"GET") -> tuple[int, list[bytes], bytes]:
        response = await self.agent.request(method, f"http://127.0.0.1:{self.metricsPort}{path}".encode())
        body = await readBody(response)
        return response.code, response.headers.getRawHeaders(b"content-type", []), body

    async def test_scrapeAfterRealTraffic(self) -> None:
        admin = DEMO_USERS[0]
        stack = self.stack
        # a, b and c signed in; signing out of a ends b too.
        await stack.walk(admin.username, admin.password, {"x-authentik-username": admin.username})
        # A callback nobody started.
        page = await stack.browser.request(
            "GET",
            stack.external["a"] + "/outpost.goauthentik.io/callback?X-authentik-auth-callback=true&code=x&state=forged",
        )
        self.assertEqual(page.code, 400)
        # Signed in to a again (the provider remembers the user), then its
        # upstream goes away: nothing listens on its port any more.
        page = await stack.login("a", "/", admin.username, admin.password)
        self.assertEqual(page.code, 200)
        app = stack.service.outposts["main"].outpost.applications[stack.external["a"].removeprefix("http://")]
        assert app.proxy is not None
        workingOrigin = app.proxy.origin
        down = f"127.0.0.1:{freePort()}"
        app.proxy.origin = f"http://{down}".encode()
        page = await stack.browser.request("GET", stack.external["a"] + "/down")
        self.assertEqual(page.code, 502)
        app.proxy.origin = workingOrigin
        page = await stack.browser.request("GET", stack.external["a"] + "/outpost.goauthentik.io/ping")
        self.assertEqual(page.code, 204)

        code, contentType, body = await self.get("/metrics")
        self.assertEqual(code, 200)
        self.assertEqual(contentType, [CONTENT_TYPE_LATEST.encode()])
        result = Scrape(body.decode("utf-8"))
        self.assertEqual({name: result.types.get(name) for name in FAMILIES}, FAMILIES)
        self.assertNotIn("_created", result.text)

        main = {"outpost_name": "main"}
        self.assertEqual(result.value("akoutpost_logins_total", provider="provider-a", **main), 2)
        self.assertEqual(result.value("akoutpost_logins_total", provider="provider-b", **main), 1)
        self.assertEqual(result.value("akoutpost_sign_outs_total", provider="provider-a", **main), 1)
        self.assertEqual(result.value("akoutpost_sign_outs_total", provider="provider-b", **main), 0)
        self.assertEqual(result.value("akoutpost_sessions", provider="provider-a", **main), 1)
        self.assertEqual(result.value("akoutpost_sessions", provider="provider-b", **main), 0)
        self.assertEqual(
            result.value("akoutpost_login_failures_total", provider="provider-a", reason="invalid_state", **main), 1
        )
        self.assertEqual(
            result.value("akoutpost_upstream_errors_total", provider="provider-a", kind="refused", **main), 1
        )
        self.assertEqual(result.value("akoutpost_sessions_evicted_total", **main), 0)
        # Provider c belongs to the other outpost, which has no metrics here.
        self.assertNotIn("provider-c", result.text)

        hostA = f"a.test:{stack.ports['main']}"
        count = "authentik_outpost_proxy_request_duration_seconds_count"
        self.assertEqual(result.value(count, method="GET", host=hostA, type="ping", **main), 1)
        self.assertGreater(result.value(count, method="GET", host=hostA, type="app", **main), 5)
        self.assertGreater(
            result.value(count, method="GET", host=f"b.test:{stack.ports['main']}", type="app", **main), 0
        )
        echo = f"127.0.0.1:{stack.echo.getHost().port}"
        upstream = "authentik_outpost_proxy_upstream_response_duration_seconds_count"
        self.assertGreater(
            result.value(upstream, method="GET", scheme="http", host=hostA, upstream_host=echo, **main), 2
        )
        # The failed request is timed under the upstream it was sent to.
        self.assertEqual(result.value(upstream, host=hostA, upstream_host=down, **main), 1)
        self.assertEqual(
            {ls["upstream_host"] for ls in result.labelSets(upstream) if ls["host"] == hostA}, {echo, down}
        )

        identity = {"outpost_name": "main", "outpost_type": "proxy", "uuid": "main", "version": "0.1.0"}
        self.assertEqual(result.value("authentik_outpost_info", **identity), 1)
        self.assertGreater(result.value("authentik_outpost_last_update", **identity), 1_600_000_000)
        self.assertEqual(
            result.value("authentik_outpost_connection", outpost_name="main", outpost_type="proxy", uuid="main"), 1
        )

    async def test_pingAndNothingElse(self) -> None:
        """
        The metrics port answers the ping (the container health check) and
        C{/metrics}, and nothing of the outpost itself.
        """
        code, _, body = await self.get("/outpost.goauthentik.io/ping")
        self.assertEqual((code, body), (204, b""))
        code, _, _ = await self.get("/outpost.goauthentik.io/ping", b"HEAD")
        self.assertEqual(code, 204)
        for path in ("/", "/outpost.goauthentik.io/start", "/metrics/x"):
            code, _, _ = await self.get(path)
            self.assertEqual(code, 404, path)
        code, _, _ = await self.get("/metrics", b"POST")
        self.assertEqual(code, 405)
