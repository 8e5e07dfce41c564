# -*- test-case-name: tests.test_documents -*-
"""
The OpenID providers' documents (discovery and JWKS), shared by every OpenID
client of the process.

Users run many providers on one box, often several against the same issuer
(one authentik, many applications; or the same client in several outposts).
Each provider has its own L{akoutpost.oidc.OpenIDClient}, but they need not
each fetch the same discovery document and key set: a fetch under way for a
URL is joined by every client asking for it meanwhile, and an answer younger
than the asker's C{maxAge} is reused.  Failures are never reused: the next
asker fetches again.  So 1,000 providers behind one issuer start with one
discovery request, not 1,000.  (Key sets are shared only while being
fetched, see L{akoutpost.oidc.OpenIDClient}.)
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

#: How long a discovery document is reused by other clients, in seconds.
DISCOVERY_MAX_AGE = 300.0


@dataclass(frozen=True)
class _Fetched:
    at: float
    document: object


class DocumentCache:
    """
    Documents fetched by URL, shared between the clients that ask for them.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self._fetched: dict[Hashable, _Fetched] = {}
        self._waiting: dict[Hashable, list[Deferred[Any]]] = {}
        self._fetching: dict[Hashable, Deferred[Any]] = {}
        #: How many fetches were started (for tests and benchmarks).
        self.fetches = 0

    def get(self, key: Hashable, fetch: Callable[[], Deferred[Any]], maxAge: float) -> Deferred[Any]:
        """
        The document called C{key}: one fetched less than C{maxAge} seconds
        ago, the one being fetched now, or a new fetch with C{fetch()}.

        @param key: What the document is, such as its URL and what it was
            checked against: C{fetch} parses and checks it, so that a
            document found unusable is a failure and never shared.

        @return: A L{Deferred} of the caller's own: cancelling it (a client
            stopping) leaves the fetch going for the others.
        """
        fetched = self._fetched.get(key)
        if fetched is not None and self.clock.seconds() - fetched.at < maxAge:
            return succeed(fetched.document)
        first = key not in self._waiting
        waiting = self._waiting.setdefault(key, [])

        def cancel(waiter: Deferred[Any]) -> None:
            # The last asker to give up cancels the fetch itself.
            if waiter in waiting:
                waiting.remove(waiter)
            if not waiting and key in self._fetching:
                self._fetching[key].cancel()

        waiter: Deferred[Any] = Deferred(cancel)
        waiting.append(waiter)
        if first:
            self.fetches += 1
            fetching = maybeDeferred(fetch)
            if not fetching.called:
                self._fetching[key] = fetching
            fetching.addBoth(self._settled, key)
        return waiter

    def _settled(self, result: object, key: Hashable) -> None:
        self._fetching.pop(key, None)
        if not isinstance(result, Failure):
            self._fetched[key] = _Fetched(self.clock.seconds(), result)
        for each in self._waiting.pop(key, []):
            if each.called:
                continue
            if isinstance(result, Failure):
                each.errback(Failure(result.value, result.type, result.getTracebackObject()))
            else:
                each.callback(result)
