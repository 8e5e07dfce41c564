"""
The OpenID providers' documents shared by every client of the process: one
fetch for everyone asking at once, an answer reused while young enough, a
failure never reused.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from akoutpost.documents import DocumentCache
from tests.test_reload import ReloadCase, outpost, provider


class Fetcher:
    """
    Fetches that the test settles by hand.
    """

    def __init__(self) -> None:
        self.pending: list[Deferred[Any]] = []
        self.cancelled = 0

    def __call__(self) -> Deferred[Any]:
        d: Deferred[Any] = Deferred(lambda _: setattr(self, "cancelled", self.cancelled + 1))
        self.pending.append(d)
        return d


class DocumentCacheTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.cache = DocumentCache(self.clock)
        self.fetch = Fetcher()

    def test_askersMeanwhileShareOneFetch(self) -> None:
        first = self.cache.get("u", self.fetch, 60)
        second = self.cache.get("u", self.fetch, 60)
        self.assertEqual(len(self.fetch.pending), 1)
        self.assertNoResult(first)
        self.fetch.pending[0].callback({"doc": 1})
        self.assertEqual(self.successResultOf(first), {"doc": 1})
        self.assertEqual(self.successResultOf(second), {"doc": 1})

    def test_reusedWhileYoungerThanTheAskersMaxAge(self) -> None:
        self.cache.get("u", self.fetch, 60)
        self.fetch.pending[0].callback("old")
        self.clock.advance(30)
        self.assertEqual(self.successResultOf(self.cache.get("u", self.fetch, 60)), "old")
        self.assertEqual(len(self.fetch.pending), 1)
        fresh = self.cache.get("u", self.fetch, 10)
        self.assertEqual(len(self.fetch.pending), 2, "an asker wanting a younger answer fetches again")
        self.fetch.pending[1].callback("new")
        self.assertEqual(self.successResultOf(fresh), "new")
        self.assertEqual(self.cache.fetches, 2)

    def test_otherKeysFetchedApart(self) -> None:
        self.cache.get("u", self.fetch, 60)
        self.cache.get("v", self.fetch, 60)
        self.assertEqual(len(self.fetch.pending), 2)

    def test_failureGoesToEveryAskerAndIsNotKept(self) -> None:
        first = self.cache.get("u", self.fetch, 60)
        second = self.cache.get("u", self.fetch, 60)
        self.fetch.pending[0].errback(ValueError("unusable document"))
        self.failureResultOf(first, ValueError)
        self.failureResultOf(second, ValueError)
        third = self.cache.get("u", self.fetch, 60)
        self.assertEqual(len(self.fetch.pending), 2)
        self.fetch.pending[1].callback("good")
        self.assertEqual(self.successResultOf(third), "good")

    def test_cancellingOneAskerLeavesTheFetchForTheOthers(self) -> None:
        first = self.cache.get("u", self.fetch, 60)
        second = self.cache.get("u", self.fetch, 60)
        first.cancel()
        self.failureResultOf(first, CancelledError)
        self.assertEqual(self.fetch.cancelled, 0)
        self.fetch.pending[0].callback("doc")
        self.assertEqual(self.successResultOf(second), "doc")

    def test_cancellingEveryAskerCancelsTheFetch(self) -> None:
        first = self.cache.get("u", self.fetch, 60)
        second = self.cache.get("u", self.fetch, 60)
        first.cancel()
        self.assertEqual(self.fetch.cancelled, 0)
        second.cancel()
        self.assertEqual(self.fetch.cancelled, 1)
        self.failureResultOf(first, CancelledError)
        self.failureResultOf(second, CancelledError)
        third = self.cache.get("u", self.fetch, 60)
        self.assertEqual(len(self.fetch.pending), 2, "a new asker starts a new fetch")
        self.fetch.pending[1].callback("doc")
        self.assertEqual(self.successResultOf(third), "doc")

    def test_fetchAnsweredAtOnce(self) -> None:
        self.assertEqual(self.successResultOf(self.cache.get("u", lambda: succeed("doc"), 60)), "doc")
        self.assertEqual(self.successResultOf(self.cache.get("u", self.fetch, 60)), "doc")


class SharedAcrossOutpostsTests(ReloadCase):
    """
    Providers of one issuer, in two outposts of one process, discover it
    with one request.
    """

    def test_oneDiscoveryForEveryProviderOfAnIssuer(self) -> None:
        self.start(
            {
                "main": outpost(9000, provider("a"), provider("b")),
                "other": outpost(9100, provider("c"), provider("d")),
            }
        )
        clients = [
            app.oidc for service in self.service.outposts.values() for app in service.outpost.applications.values()
        ]
        self.assertEqual(len({id(c) for c in clients}), 4)
        self.assertTrue(all(c.ready for c in clients))
        self.assertEqual(self.service.documents.fetches, 1)
        self.assertEqual(len({id(c.metadata) for c in clients}), 1)

    def test_reloadedProviderReusesTheDiscovery(self) -> None:
        self.start({"main": outpost(9000, provider("a"))})
        self.reload({"main": outpost(9000, provider("a"), provider("b"))})
        [client] = [a.oidc for a in self.service.outposts["main"].outpost.applications.values() if a.config.name == "b"]
        self.assertTrue(client.ready)
        self.assertEqual(self.service.documents.fetches, 1)
