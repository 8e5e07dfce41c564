"""
Metrics in memory: the in-memory world of L{tests.test_application} (browser,
outposts, development provider and echo upstream on one clock) does logins,
sign-outs, failed callbacks and upstream failures; then each outpost's
registry is rendered in the Prometheus text format, parsed back, and its
names, labels and values checked.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlencode

from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.internet.error import ConnectionLost, ConnectionRefusedError, DNSLookupError, TimeoutError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web._newclient import ResponseNeverReceived
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer

from akoutpost.config import parseConfig
from akoutpost.metrics import (
    BACKCHANNEL_OUTCOMES,
    LOGIN_FAILURE_REASONS,
    UPSTREAM_ERROR_KINDS,
    MetricsResource,
    OutpostMetrics,
    methodLabel,
    upstreamErrorKind,
)
from akoutpost.service import AkOutpostService
from akoutpost.session import SessionStore
from akoutpost.testing import ClientRegistration
from akoutpost.tokens import BACKCHANNEL_LOGOUT_EVENT, TokenError
from tests._fixtures import config, providerTable
from tests.test_application import HTML, ISSUER, World, hiddenFields, location
from tests.test_forward import World as ForwardWorld

#: Every metric family an outpost exposes (histograms and counters by their
#: family name, as the text format's TYPE lines give them).
FAMILIES = {
    "authentik_outpost_proxy_request_duration_seconds": "histogram",
    "authentik_outpost_proxy_upstream_response_duration_seconds": "histogram",
    "authentik_outpost_info": "gauge",
    "authentik_outpost_last_update": "gauge",
    "authentik_outpost_connection": "gauge",
    "akoutpost_sessions": "gauge",
    "akoutpost_logins": "counter",
    "akoutpost_sign_outs": "counter",
    "akoutpost_sessions_evicted": "counter",
    "akoutpost_upstream_errors": "counter",
    "akoutpost_login_failures": "counter",
    "akoutpost_backchannel_logouts": "counter",
}


class Scrape:
    """
    One rendering of a registry, parsed back from the text format.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.types: dict[str, str] = {}
        self.samples: list[tuple[str, dict[str, str], float]] = []
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for sample in family.samples:
                self.samples.append((sample.name, dict(sample.labels), sample.value))

    def value(self, name: str, **labels: str) -> float:
        """
        The value of the one sample C{name} whose labels include C{labels}.
        """
        found = [v for n, ls, v in self.samples if n == name and labels.items() <= ls.items()]
        if len(found) != 1:
            raise AssertionError(f"{len(found)} samples {name} {labels}:\n{self.text}")
        return found[0]

    def labelSets(self, name: str) -> list[dict[str, str]]:
        return [ls for n, ls, _ in self.samples if n == name]


def scrape(metrics: OutpostMetrics) -> Scrape:
    return Scrape(metrics.render().decode("utf-8"))


@implementer(IAgent)
class FailingAgent:
    """
    An upstream agent whose requests fail with C{failure}, or never answer
    when it is L{None}.
    """

    def __init__(self, failure: Failure | None) -> None:
        self.failure = failure

    def request(
        self, method: bytes, uri: bytes, headers: Headers | None = None, bodyProducer: Any = None
    ) -> defer.Deferred[IResponse]:
        if self.failure is None:
            return defer.Deferred()
        return defer.fail(self.failure)

    def flush(self) -> None:
        pass


class InMemoryMetricsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = World(self)
        self.main = self.world.outposts["main"].metrics
        self.other = self.world.outposts["other"].metrics

    def test_familiesAndZeroSeries(self) -> None:
        """
        Every family is there from the start with its type, and the counters
        of every provider (and reason, and kind) are present at 0, so that
        rates work from the first scrape.
        """
        result = scrape(self.main)
        self.assertEqual({name: result.types.get(name) for name in FAMILIES}, FAMILIES)
        for provider in ("a", "b"):
            self.assertEqual(result.value("akoutpost_logins_total", outpost_name="main", provider=provider), 0)
            self.assertEqual(result.value("akoutpost_sign_outs_total", outpost_name="main", provider=provider), 0)
            self.assertEqual(result.value("akoutpost_sessions", outpost_name="main", provider=provider), 0)
            for reason in LOGIN_FAILURE_REASONS:
                self.assertEqual(
                    result.value("akoutpost_login_failures_total", provider=provider, reason=reason), 0, reason
                )
            for kind in UPSTREAM_ERROR_KINDS:
                self.assertEqual(result.value("akoutpost_upstream_errors_total", provider=provider, kind=kind), 0)
            for outcome in BACKCHANNEL_OUTCOMES:
                self.assertEqual(
                    result.value("akoutpost_backchannel_logouts_total", provider=provider, outcome=outcome), 0
                )
        self.assertEqual(result.value("akoutpost_sessions_evicted_total", outpost_name="main"), 0)
        self.assertEqual(
            result.value("authentik_outpost_connection", outpost_name="main", outpost_type="proxy", uuid="main"), 0
        )
        identity = {"outpost_name": "main", "outpost_type": "proxy", "uuid": "main", "version": "0.1.0", "build": ""}
        self.assertEqual(result.value("authentik_outpost_info", **identity), 1)
        # Only the series Prometheus' Go client would write, not the Python
        # client's wall-clock *_created ones.
        self.assertNotIn("_created", result.text)
        # Each outpost has its own registry: nothing of "other" here.
        self.assertNotIn('provider="c"', result.text)
        self.assertIn('provider="c"', scrape(self.other).text)

    def test_loginAndSignOut(self) -> None:
        response, _ = self.world.login("https://a.example.com/")
        self.assertEqual(response.code, 200)
        result = scrape(self.main)
        self.assertEqual(result.value("akoutpost_logins_total", outpost_name="main", provider="a"), 1)
        self.assertEqual(result.value("akoutpost_logins_total", outpost_name="main", provider="b"), 0)
        self.assertEqual(result.value("akoutpost_sessions", outpost_name="main", provider="a"), 1)
        self.assertEqual(result.value("akoutpost_sessions", outpost_name="main", provider="b"), 0)
        # The login walk's requests, each labelled with the provider's host.
        requests = result.value(
            "authentik_outpost_proxy_request_duration_seconds_count",
            outpost_name="main",
            method="GET",
            host="a.example.com",
            type="app",
        )
        self.assertGreaterEqual(requests, 4)
        self.assertEqual(
            result.value(
                "authentik_outpost_proxy_upstream_response_duration_seconds_count",
                outpost_name="main",
                method="GET",
                scheme="http",
                host="a.example.com",
                upstream_host="a-backend.internal:8080",
            ),
            2,  # the page as the browser loads it, then as JSON (World.login)
        )

        response, _ = self.world.get("https://a.example.com/outpost.goauthentik.io/sign_out")
        self.assertEqual(response.code, 302)
        result = scrape(self.main)
        self.assertEqual(result.value("akoutpost_sign_outs_total", outpost_name="main", provider="a"), 1)
        self.assertEqual(result.value("akoutpost_sessions", outpost_name="main", provider="a"), 0)
        # Signing out without a session is no sign-out.
        self.world.get("https://a.example.com/outpost.goauthentik.io/sign_out")
        self.assertEqual(scrape(self.main).value("akoutpost_sign_outs_total", provider="a"), 1)

    def test_liveSessionsLeaveAtExpiry(self) -> None:
        """
        The sessions gauge is read from the store at scrape time and counts
        live sessions only, before any sweep.
        """
        self.world.login("https://a.example.com/")
        self.assertEqual(scrape(self.main).value("akoutpost_sessions", provider="a"), 1)
        self.world.clock.advance(601)  # provider a's access_token_validity is 600
        self.assertEqual(scrape(self.main).value("akoutpost_sessions", provider="a"), 0)

    def startLogin(self, host: str = "a.example.com") -> str:
        """
        The provider's redirect back to the outpost, not visited yet.
        """
        response, _ = self.world.get(f"https://{host}/outpost.goauthentik.io/start", HTML)
        response, body = self.world.get(location(response), HTML)
        if response.code == 302:
            # Signed in at the provider already: straight back.
            return location(response)
        fields = hiddenFields(body.decode())
        fields.update(username="alice", password="alice-demo")
        response, _ = self.world.get(f"{ISSUER}authorize/", HTML, method="POST", data=fields)
        return location(response)

    def test_loginFailureReasons(self) -> None:
        callback = "https://a.example.com/outpost.goauthentik.io/callback?X-authentik-auth-callback=true"
        # A replayed callback (and a forged state) is an invalid state.
        url = self.startLogin()
        self.assertEqual(self.world.get(url, HTML)[0].code, 302)
        self.assertEqual(self.world.get(url, HTML)[0].code, 400)
        self.assertEqual(self.world.get(f"{callback}&code=x&state=forged", HTML)[0].code, 400)
        # The provider refused.
        self.assertEqual(self.world.get(f"{callback}&error=access_denied&state=x", HTML)[0].code, 403)
        # A code the provider does not know: its token endpoint answers an error.
        url = re.sub(r"code=[^&]*", "code=nope", self.startLogin())
        self.assertEqual(self.world.get(url, HTML)[0].code, 502)
        result = scrape(self.main)
        failures = {
            reason: result.value("akoutpost_login_failures_total", outpost_name="main", provider="a", reason=reason)
            for reason in LOGIN_FAILURE_REASONS
        }
        self.assertEqual(
            failures,
            {
                "invalid_state": 2,
                "refused": 1,
                "provider_error": 1,
                "token_invalid": 0,
                "unavailable": 0,
                "header_refused": 0,
                "header_provider_error": 0,
            },
        )
        self.assertEqual(result.value("akoutpost_logins_total", provider="a"), 1)

    def test_tokenInvalid(self) -> None:
        """
        An answer whose tokens do not verify is C{token_invalid}.
        """
        url = self.startLogin()
        app = self.world.outposts["main"].applications["a.example.com"]
        self.patch(app.oidc, "redeem", lambda *args: defer.fail(TokenError("bad signature")))
        response, _ = self.world.get(url, HTML)
        self.assertEqual(response.code, 400)
        result = scrape(self.main)
        self.assertEqual(result.value("akoutpost_login_failures_total", provider="a", reason="token_invalid"), 1)
        self.assertEqual(result.value("akoutpost_logins_total", provider="a"), 0)

    def test_unavailable(self) -> None:
        app = self.world.outposts["main"].applications["a.example.com"]
        app.oidc.metadata = None
        response, _ = self.world.get("https://a.example.com/outpost.goauthentik.io/start", HTML)
        self.assertEqual(response.code, 503)
        result = scrape(self.main)
        self.assertEqual(result.value("akoutpost_login_failures_total", provider="a", reason="unavailable"), 1)

    def test_headerAuthenticationFailures(self) -> None:
        """
        A bearer token the provider does not know is C{header_refused}, once
        per provider call (the refusal is then cached); a provider that
        cannot be asked is C{header_provider_error}.  Neither is a login.
        """
        for _ in range(3):
            response, _ = self.world.get("https://a.example.com/api", {"Authorization": "Bearer unknown-token"})
            self.assertEqual(response.code, 401)
        app = self.world.outposts["main"].applications["a.example.com"]
        app.oidc.metadata = None
        response, _ = self.world.get("https://a.example.com/api", {"Authorization": "Bearer another-token"})
        self.assertEqual(response.code, 401)
        result = scrape(self.main)
        self.assertEqual(result.value("akoutpost_login_failures_total", provider="a", reason="header_refused"), 1)
        self.assertEqual(
            result.value("akoutpost_login_failures_total", provider="a", reason="header_provider_error"), 1
        )
        self.assertEqual(result.value("akoutpost_logins_total", provider="a"), 0)

    def test_backchannelLogouts(self) -> None:
        """
        Back-channel logout requests are counted per provider: accepted when
        the token was verified and its sessions ended, refused otherwise.
        """
        endpoint = "https://a.example.com/outpost.goauthentik.io/backchannel-logout"
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        now = int(self.world.clock.seconds())
        claims = {
            "iss": ISSUER,
            "aud": "client-a",
            "iat": now,
            "exp": now + 120,
            "jti": "jti-metrics",
            "events": {BACKCHANNEL_LOGOUT_EVENT: {}},
            "sid": "sid-1",
        }
        client = ClientRegistration("client-a", "secret-a", ("https://a.example.com/cb",))
        token = self.world.idp._sign(client, claims)
        body = urlencode({"logout_token": token}).encode("ascii")
        self.assertEqual(self.world.get(endpoint, form, method="POST", data=body)[0].code, 200)
        # The same token again (a replay), a forged one, and a GET: refused.
        self.assertEqual(self.world.get(endpoint, form, method="POST", data=body)[0].code, 400)
        forged = urlencode({"logout_token": token[:-4] + "AAAA"}).encode("ascii")
        self.assertEqual(self.world.get(endpoint, form, method="POST", data=forged)[0].code, 400)
        self.assertEqual(self.world.get(endpoint)[0].code, 405)
        result = scrape(self.main)
        self.assertEqual(
            result.value("akoutpost_backchannel_logouts_total", outpost_name="main", provider="a", outcome="accepted"),
            1,
        )
        self.assertEqual(
            result.value("akoutpost_backchannel_logouts_total", outpost_name="main", provider="a", outcome="refused"),
            3,
        )
        self.assertEqual(result.value("akoutpost_backchannel_logouts_total", provider="b", outcome="refused"), 0)

    def test_upstreamRefused(self) -> None:
        self.world.login("https://a.example.com/")
        self.world.upstream.down = True
        response, _ = self.world.get("https://a.example.com/x", HTML)
        self.assertEqual(response.code, 502)
        result = scrape(self.main)
        self.assertEqual(result.value("akoutpost_upstream_errors_total", provider="a", kind="refused"), 1)
        self.assertEqual(result.value("akoutpost_upstream_errors_total", provider="a", kind="timeout"), 0)
        # The failed request was timed too: three upstream requests in all.
        self.assertEqual(
            result.value(
                "authentik_outpost_proxy_upstream_response_duration_seconds_count", host="a.example.com", method="GET"
            ),
            3,
        )

    def test_upstreamReset(self) -> None:
        self.world.login("https://a.example.com/")
        self.world.upstream.agent = FailingAgent(Failure(ResponseNeverReceived([Failure(ConnectionLost())])))
        response, _ = self.world.get("https://a.example.com/x", HTML)
        self.assertEqual(response.code, 502)
        self.assertEqual(scrape(self.main).value("akoutpost_upstream_errors_total", provider="a", kind="reset"), 1)

    def test_upstreamTimeoutTimedWithTheClock(self) -> None:
        """
        Durations come from the outpost's clock: an upstream that never
        answers is given up after the response timeout (60 s), and both
        histograms record exactly that.
        """
        self.world.login("https://a.example.com/")
        self.world.upstream.agent = FailingAgent(None)
        d = self.world.browser.request("GET", "https://a.example.com/slow", headers=HTML, allow_redirects=False)
        self.world.pump()
        self.assertNoResult(d)
        self.world.clock.advance(60)
        self.world.pump()
        self.assertEqual(self.successResultOf(d).code, 504)
        result = scrape(self.main)
        self.assertEqual(result.value("akoutpost_upstream_errors_total", provider="a", kind="timeout"), 1)
        upstream = {"host": "a.example.com", "upstream_host": "a-backend.internal:8080"}
        self.assertEqual(
            result.value("authentik_outpost_proxy_upstream_response_duration_seconds_sum", **upstream), 60.0
        )
        self.assertEqual(
            result.value("authentik_outpost_proxy_upstream_response_duration_seconds_bucket", le="+Inf", **upstream),
            3,
        )
        self.assertEqual(
            result.value("authentik_outpost_proxy_upstream_response_duration_seconds_bucket", le="10.0", **upstream),
            2,
        )
        self.assertEqual(
            result.value(
                "authentik_outpost_proxy_request_duration_seconds_sum", host="a.example.com", method="GET", type="app"
            ),
            60.0,
        )

    def test_pingAndUnknownHost(self) -> None:
        self.assertEqual(self.world.get("https://a.example.com/outpost.goauthentik.io/ping")[0].code, 204)
        self.assertEqual(
            self.world.get("https://a.example.com/x", headers={"Host": "nobody.example"}, method="PATCH")[0].code,
            400,
        )
        result = scrape(self.main)
        self.assertEqual(
            result.value(
                "authentik_outpost_proxy_request_duration_seconds_count",
                outpost_name="main",
                method="GET",
                host="a.example.com",
                type="ping",
            ),
            1,
        )
        # A host no provider serves is not a label value (clients choose it).
        self.assertEqual(
            result.value("authentik_outpost_proxy_request_duration_seconds_count", method="PATCH", host="", type="app"),
            1,
        )
        self.assertNotIn("nobody.example", result.text)

    def test_eviction(self) -> None:
        store = self.world.outposts["main"].store
        store.maxSessions = 1
        self.world.login("https://a.example.com/")
        self.world.login("https://b.example.com/")
        self.assertEqual(len(store), 1)
        result = scrape(self.main)
        self.assertEqual(result.value("akoutpost_sessions_evicted_total", outpost_name="main"), 1)
        self.assertEqual(result.value("akoutpost_logins_total", provider="b"), 1)
        self.assertEqual(result.value("akoutpost_sessions", provider="a"), 0)
        self.assertEqual(result.value("akoutpost_sessions", provider="b"), 1)


class ForwardAuthMetricsTests(SynchronousTestCase):
    def test_labelledWithTheCheckedProvider(self) -> None:
        """
        A forward-auth check is labelled with the external host of the
        provider whose URL is checked, not with the outpost's own address or
        the checked URL's host.
        """
        world = ForwardWorld(self)
        self.assertEqual(world.check("traefik", "https://app.example.com/x")[0].code, 302)
        self.assertEqual(world.check("nginx", "https://x.apps.example.com/y")[0].code, 401)
        self.assertEqual(world.check("caddy", "https://nobody.example.com/")[0].code, 400)
        result = scrape(world.outposts["main"].metrics)
        count = "authentik_outpost_proxy_request_duration_seconds_count"
        self.assertEqual(result.value(count, host="app.example.com", type="app"), 1)
        self.assertEqual(result.value(count, host="auth.apps.example.com", type="app"), 1)
        self.assertEqual(result.value(count, host="", type="app"), 1)
        self.assertNotIn("outpost.internal", result.text)
        self.assertNotIn("x.apps.example.com", result.text)


class ClassificationTests(SynchronousTestCase):
    def test_upstreamErrorKinds(self) -> None:
        cases = [
            (ConnectionRefusedError(), "refused"),
            (TimeoutError(), "timeout"),
            (defer.TimeoutError(), "timeout"),
            (ConnectionLost(), "reset"),
            (ResponseNeverReceived([Failure(ConnectionLost())]), "reset"),
            (ResponseNeverReceived([Failure(ConnectionRefusedError())]), "refused"),
            (DNSLookupError(), "other"),
            (ValueError(), "other"),
        ]
        for error, kind in cases:
            self.assertEqual(upstreamErrorKind(Failure(error)), kind, error)

    def test_methodLabelBounded(self) -> None:
        self.assertEqual(
            [methodLabel(m) for m in (b"GET", b"PATCH", b"PROPFIND", b"get")], ["GET", "PATCH"] + ["other"] * 2
        )

    def test_evictionHook(self) -> None:
        evicted: list[str] = []
        store = SessionStore(Clock(), maxSessions=1, onEvict=lambda s: evicted.append(s.sessionId))
        first = store.create("p", {"sub": "1"}, "", "", 60)
        store.create("p", {"sub": "2"}, "", "", 60)
        self.assertEqual(evicted, [first.sessionId])


def renderMetrics(resource: MetricsResource, path: bytes, method: bytes = b"GET") -> DummyRequest:
    request = DummyRequest([b""])
    request.uri = path
    request.method = method
    body = resource.render(request)
    request.write(body)
    request.finish()
    return request


class ServiceTests(SynchronousTestCase):
    """
    The metrics listener as the service builds it, on a memory reactor.
    """

    def test_firstOutpostListensOn9300(self) -> None:
        table = {"http": "tcp:0", "https": "", "providers": [providerTable()]}
        other = {
            "http": "tcp:0",
            "https": "",
            "providers": [providerTable(external_host="https://o.example", client_id="o")],
        }
        reactor = MemoryReactorClock()
        service = AkOutpostService(parseConfig({"outposts": {"main": table, "other": other}}), reactor)
        self.assertIsNotNone(service.outposts["main"].metricsListener)
        self.assertIsNone(service.outposts["other"].metricsListener)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertIn(9300, [port for port, *_ in reactor.tcpServers])

    def test_startedAndStopped(self) -> None:
        reactor = MemoryReactorClock()
        reactor.advance(1_700_000_000)
        cfg = config({"main": [providerTable()]}, metrics="tcp:9301:interface=127.0.0.1", name="Main outpost")
        service = AkOutpostService(cfg, reactor)
        outpost = service.outposts["main"]
        metrics = outpost.outpost.metrics
        service.startService()
        self.assertIn((9301, "127.0.0.1"), [(port, interface) for port, _, _, interface in reactor.tcpServers])
        result = scrape(metrics)
        identity = {
            "outpost_name": "Main outpost",
            "outpost_type": "proxy",
            "uuid": "main",
            "version": "0.1.0",
            "build": "",
        }
        self.assertEqual(result.value("authentik_outpost_info", **identity), 1)
        self.assertEqual(result.value("authentik_outpost_last_update", **identity), 1_700_000_000)
        connection = {k: identity[k] for k in ("outpost_name", "outpost_type", "uuid")}
        self.assertEqual(result.value("authentik_outpost_connection", **connection), 1)
        service.stopService()
        self.assertEqual(scrape(metrics).value("authentik_outpost_connection", **connection), 0)

    def test_routes(self) -> None:
        metrics = OutpostMetrics("main", "main", Clock())
        resource = MetricsResource(metrics)
        request = renderMetrics(resource, b"/metrics")
        self.assertIn(request.responseCode, (None, 200))  # None: DummyRequest's untouched 200
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-type"), [CONTENT_TYPE_LATEST.encode()])
        Scrape(b"".join(request.written).decode())
        self.assertIn(b"authentik_outpost_connection", b"".join(request.written))
        self.assertEqual(renderMetrics(resource, b"/outpost.goauthentik.io/ping").responseCode, 204)
        self.assertEqual(renderMetrics(resource, b"/outpost.goauthentik.io/ping", b"HEAD").responseCode, 204)
        self.assertEqual(renderMetrics(resource, b"/metrics", b"POST").responseCode, 405)
        self.assertEqual(renderMetrics(resource, b"/").responseCode, 404)
        self.assertEqual(renderMetrics(resource, b"/metrics/x").responseCode, 404)
