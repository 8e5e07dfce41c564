# -*- test-case-name: tests.test_metrics -*-
"""
Prometheus metrics of an outpost, served on its C{metrics} listener.

Each outpost has its own L{OutpostMetrics} on its own registry, so that
outposts (and tests) never share a series.  The names are authentik's where it
has one (reference section 1.5) and C{akoutpost_*} for our own.  Durations are
measured with the outpost's clock.

Every label value is bounded, so that no client can grow the registry: the
C{host} label is the external host of the provider that served the request
(empty when none did), not the client's C{Host} header, and an unusual HTTP
method is counted as C{other}.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from twisted.internet import defer, error
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web._newclient import _WrapperException
from twisted.web.resource import Resource
from twisted.web.server import Request

from akoutpost import __version__
from akoutpost.histogram import ReactorHistogram

OUTPOST_TYPE = "proxy"
PING_PATH = b"/outpost.goauthentik.io/ping"
METRICS_PATH = b"/metrics"

#: The C{type} label of C{authentik_outpost_proxy_request_duration_seconds}
#: (authentik also has C{static}, for files this outpost does not serve).
REQUEST_TYPES = ("ping", "app")
#: The C{kind} label of C{akoutpost_upstream_errors_total}.
UPSTREAM_ERROR_KINDS = ("refused", "timeout", "reset", "other")
#: The C{reason} label of C{akoutpost_login_failures_total}: the login
#: round trip's, then header authentication's (a refused bearer token or app
#: password, or a provider that could not be asked).
LOGIN_FAILURE_REASONS = (
    "invalid_state",
    "provider_error",
    "token_invalid",
    "refused",
    "unavailable",
    "header_refused",
    "header_provider_error",
)
#: The C{outcome} label of C{akoutpost_backchannel_logouts_total}.
BACKCHANNEL_OUTCOMES = ("accepted", "refused")
#: The values of C{akoutpost_config_reloads}' C{outcome} label.
RELOAD_OUTCOMES = ("applied", "refused")

_METHODS = {
    method: method.decode("ascii")
    for method in (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH")
}


def methodLabel(method: bytes) -> str:
    """
    The C{method} label of a request: a standard method, else C{other}.
    """
    return _METHODS.get(method, "other")


def upstreamErrorKind(failure: Failure) -> str:
    """
    What went wrong with an upstream: C{refused}, C{timeout} (connecting or
    waiting for the response), C{reset} (the connection broke) or C{other}.
    """
    value = failure.value
    if isinstance(value, _WrapperException) and value.reasons:
        # ResponseNeverReceived, ResponseFailed, RequestTransmissionFailed.
        value = value.reasons[0].value
    if isinstance(value, defer.TimeoutError | error.TimeoutError):
        return "timeout"
    if isinstance(value, error.ConnectionRefusedError):
        return "refused"
    if isinstance(value, error.ConnectionLost | error.ConnectionDone):
        return "reset"
    return "other"


class _WithoutCreated:
    """
    A registry's metrics without the C{*_created} series that the Python
    client adds to counters and histograms (wall-clock times of each label
    set's creation): authentik's Go outpost has none, and they would double
    the output.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


def _removeSeries(metric: Counter, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass


class _SessionsCollector:
    """
    C{akoutpost_sessions}: the live sessions of each provider, counted in
    one pass over the store when the registry is scraped.
    """

    def __init__(self, metrics: OutpostMetrics) -> None:
        self.metrics = metrics

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "akoutpost_sessions", "Live sessions in the outpost's store", labels=["outpost_name", "provider"]
        )

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        counts = self.metrics.liveSessions()
        for provider, keys in self.metrics._sessionKeys.items():
            family.add_metric([self.metrics.name, provider], sum(counts.get(key, 0) for key in keys))
        yield family


class RequestTimer:
    """
    One request being timed; C{host} is its label, set once the provider
    serving the request is known.
    """

    __slots__ = ("host", "_metrics", "_method", "_kind", "_started")

    def __init__(self, metrics: OutpostMetrics, method: str, kind: str, started: float) -> None:
        self.host = ""
        self._metrics = metrics
        self._method = method
        self._kind = kind
        self._started = started

    def finished(self) -> None:
        """
        The request was answered (or its client went away): observe its
        duration.
        """
        metrics = self._metrics
        elapsed = metrics.clock.seconds() - self._started
        metrics._requestSeries(self._method, self.host, self._kind).observe(elapsed if elapsed > 0.0 else 0.0)


class OutpostMetrics:
    """
    The metrics of one outpost, on their own L{CollectorRegistry}.

    @ivar registry: What the metrics listener renders.
    """

    def __init__(
        self,
        outpostName: str,
        uuid: str,
        clock: IReactorTime,
        liveSessions: Callable[[], Mapping[str, int]] = dict,
    ) -> None:
        """
        @param outpostName: The C{outpost_name} label (the outpost's name).
        @param uuid: The C{uuid} label (the outpost's key in the config).
        @param liveSessions: Counts the live sessions by provider key, at
            scrape time.
        """
        self.name = outpostName
        self.uuid = uuid
        self.clock = clock
        self.registry = CollectorRegistry()
        registry = self.registry
        # Observed by every request, from the reactor thread only.
        self.requestDuration = ReactorHistogram(
            "authentik_outpost_proxy_request_duration_seconds",
            "Time taken to answer requests, until the last byte is written",
            ["outpost_name", "method", "host", "type"],
            registry,
        )
        self.upstreamDuration = ReactorHistogram(
            "authentik_outpost_proxy_upstream_response_duration_seconds",
            "Time from sending a request upstream to the upstream's response headers (or its failure)",
            ["outpost_name", "method", "scheme", "host", "upstream_host"],
            registry,
        )
        identity = ["outpost_name", "outpost_type", "uuid", "version", "build"]
        self.info = Gauge("authentik_outpost_info", "Outpost info", identity, registry=registry)
        self.lastUpdate = Gauge(
            "authentik_outpost_last_update",
            "Time the outpost's configuration was last loaded",
            identity,
            registry=registry,
        )
        self.connection = Gauge(
            "authentik_outpost_connection",
            "1 while the outpost is running",
            ["outpost_name", "outpost_type", "uuid"],
            registry=registry,
        )
        # The upstream series by method, host and origin: finding one from
        # scratch parses the origin.
        self._upstreamChildren: dict[tuple[str, str, bytes], Any] = {}
        self.liveSessions = liveSessions
        self._sessionKeys: dict[str, set[str]] = {}
        registry.register(_SessionsCollector(self))
        self.logins = Counter("akoutpost_logins", "Successful logins", ["outpost_name", "provider"], registry=registry)
        self.signOuts = Counter(
            "akoutpost_sign_outs", "Sign-outs of signed-in users", ["outpost_name", "provider"], registry=registry
        )
        self.evictions = Counter(
            "akoutpost_sessions_evicted",
            "Sessions dropped to make room because the store was full",
            ["outpost_name"],
            registry=registry,
        )
        self.upstreamErrors = Counter(
            "akoutpost_upstream_errors",
            "Upstream requests that failed before a response",
            ["outpost_name", "provider", "kind"],
            registry=registry,
        )
        self.loginFailures = Counter(
            "akoutpost_login_failures",
            "Logins that could not start or finish",
            ["outpost_name", "provider", "reason"],
            registry=registry,
        )
        self.backchannelLogouts = Counter(
            "akoutpost_backchannel_logouts",
            "Back-channel logout requests from the provider, accepted (sessions ended) or refused",
            ["outpost_name", "provider", "outcome"],
            registry=registry,
        )
        self.configReloads = Counter(
            "akoutpost_config_reloads",
            "Configuration reloads (SIGHUP): applied, or refused with the running configuration kept",
            ["outpost_name", "outcome"],
            registry=registry,
        )
        for outcome in RELOAD_OUTCOMES:
            self.configReloads.labels(outpostName, outcome)
        self.evictions.labels(outpostName)
        self.info.labels(*self._identity()).set(1)
        self.connection.labels(outpostName, OUTPOST_TYPE, uuid).set(0)

    def _identity(self) -> tuple[str, ...]:
        return (self.name, OUTPOST_TYPE, self.uuid, __version__, "")

    def started(self) -> None:
        """
        The outpost is running: C{last_update} now, C{connection} 1.
        """
        self.lastUpdate.labels(*self._identity()).set(self.clock.seconds())
        self.connection.labels(self.name, OUTPOST_TYPE, self.uuid).set(1)

    def stopped(self) -> None:
        self.connection.labels(self.name, OUTPOST_TYPE, self.uuid).set(0)

    def configReloaded(self, applied: bool) -> None:
        """
        Count a configuration reload; an applied one is also the outpost's
        C{last_update}.
        """
        self.configReloads.labels(self.name, "applied" if applied else "refused").inc()
        if applied:
            self.lastUpdate.labels(*self._identity()).set(self.clock.seconds())

    def forgetProviders(self, names: Iterable[str], liveKeys: Collection[str]) -> None:
        """
        Drop the series of the providers called C{names} (gone after a
        reload), and stop counting sessions under provider keys that are
        not in C{liveKeys}.
        """
        for name in names:
            self._sessionKeys.pop(name, None)
            for counter in (self.logins, self.signOuts):
                _removeSeries(counter, self.name, name)
            for reason in LOGIN_FAILURE_REASONS:
                _removeSeries(self.loginFailures, self.name, name, reason)
            for outcome in BACKCHANNEL_OUTCOMES:
                _removeSeries(self.backchannelLogouts, self.name, name, outcome)
            for kind in UPSTREAM_ERROR_KINDS:
                _removeSeries(self.upstreamErrors, self.name, name, kind)
        for keys in self._sessionKeys.values():
            keys.intersection_update(liveKeys)

    def evicted(self, *ignored: object) -> None:
        self.evictions.labels(self.name).inc()

    def provider(self, name: str, host: str, proxied: bool) -> ProviderMetrics:
        """
        The hooks for one provider, its series present from the start at 0.

        @param host: The provider's external host (the C{host} label).
        @param proxied: Whether it is in proxy mode (has upstream series).
        """
        self.logins.labels(self.name, name)
        self.signOuts.labels(self.name, name)
        for reason in LOGIN_FAILURE_REASONS:
            self.loginFailures.labels(self.name, name, reason)
        for outcome in BACKCHANNEL_OUTCOMES:
            self.backchannelLogouts.labels(self.name, name, outcome)
        if proxied:
            for kind in UPSTREAM_ERROR_KINDS:
                self.upstreamErrors.labels(self.name, name, kind)
        return ProviderMetrics(self, name, host)

    def countSessions(self, provider: str, providerKey: str) -> None:
        """
        Report the live sessions of C{providerKey} under the provider label
        C{provider} (providers sharing a name share the series).
        """
        self._sessionKeys.setdefault(provider, set()).add(providerKey)

    def timeRequest(self, request: Request, kind: str) -> RequestTimer:
        """
        Time C{request} from now; the caller, which follows the request's
        finish anyway, calls the timer's C{finished} when it is answered
        (or its client goes away).
        """
        return RequestTimer(self, methodLabel(request.method), kind, self.clock.seconds())

    def _requestSeries(self, method: str, host: str, kind: str) -> Any:
        # Bounded: the methods, the providers' hosts and two kinds.
        return self.requestDuration.labels(self.name, method, host, kind)

    def _upstreamSeries(self, method: str, host: str, origin: bytes) -> Any:
        key = (method, host, origin)
        child = self._upstreamChildren.get(key)
        if child is None:
            parts = urlsplit(origin.decode("ascii", "replace"))
            child = self.upstreamDuration.labels(self.name, method, parts.scheme, host, parts.netloc)
            # A session's backend_override can name other upstreams: only
            # remember so many.
            if len(self._upstreamChildren) < 4096:
                self._upstreamChildren[key] = child
        return child

    def render(self) -> bytes:
        """
        Every metric in the Prometheus text format.
        """
        return generate_latest(_WithoutCreated(self.registry))


class ProviderMetrics:
    """
    The hooks the code of one provider calls.  L{NO_METRICS} records nothing.
    """

    def __init__(self, outpost: OutpostMetrics | None, provider: str, host: str) -> None:
        self.outpost = outpost
        self.provider = provider
        self.host = host

    def login(self) -> None:
        if self.outpost is not None:
            self.outpost.logins.labels(self.outpost.name, self.provider).inc()

    def signOut(self) -> None:
        if self.outpost is not None:
            self.outpost.signOuts.labels(self.outpost.name, self.provider).inc()

    def loginFailure(self, reason: str) -> None:
        """
        @param reason: One of L{LOGIN_FAILURE_REASONS}.
        """
        assert reason in LOGIN_FAILURE_REASONS, reason
        if self.outpost is not None:
            self.outpost.loginFailures.labels(self.outpost.name, self.provider, reason).inc()

    def backchannelLogout(self, accepted: bool) -> None:
        """
        Count a back-channel logout request: accepted (its sessions ended),
        or refused (any other answer).
        """
        if self.outpost is not None:
            outcome = "accepted" if accepted else "refused"
            self.outpost.backchannelLogouts.labels(self.outpost.name, self.provider, outcome).inc()

    def upstreamError(self, failure: Failure) -> None:
        if self.outpost is not None:
            self.outpost.upstreamErrors.labels(self.outpost.name, self.provider, upstreamErrorKind(failure)).inc()

    def now(self) -> float:
        """
        The time on the outpost's clock (0 outside an outpost): when an
        upstream request starts, for L{upstreamAnswered}.
        """
        return self.outpost.clock.seconds() if self.outpost is not None else 0.0

    def upstreamAnswered(self, method: bytes, origin: bytes, started: float, failure: Failure | None = None) -> None:
        """
        An upstream request begun at C{started} (from L{now}) got its
        response headers, or failed with C{failure}: time it, and count the
        failure.  (Not called for a request cancelled because its client
        went away.)

        @param origin: C{scheme://host[:port]} of the upstream.
        """
        outpost = self.outpost
        if outpost is None:
            return
        if failure is not None:
            self.upstreamError(failure)
        elapsed = outpost.clock.seconds() - started
        series = outpost._upstreamSeries(methodLabel(method), self.host, origin)
        series.observe(elapsed if elapsed > 0.0 else 0.0)


#: The hooks of a provider outside an outpost (unit tests): they do nothing.
NO_METRICS = ProviderMetrics(None, "", "")


class MetricsResource(Resource):
    """
    The root of a metrics listener: C{GET /metrics} and the ping.
    """

    isLeaf = True

    def __init__(self, metrics: OutpostMetrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render(self, request: Request) -> bytes:
        path = request.uri.partition(b"?")[0]
        request.setHeader(b"cache-control", b"no-store")
        if path == PING_PATH:
            request.setResponseCode(204)
            return b""
        if path == METRICS_PATH:
            if request.method not in (b"GET", b"HEAD"):
                request.setResponseCode(405)
                request.setHeader(b"allow", b"GET, HEAD")
                request.setHeader(b"content-type", b"text/plain; charset=utf-8")
                return b"method not allowed\n"
            request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
            return self.metrics.render()
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"not found\n"
