"""
Tests for L{akoutpost.redirect}: where a user may be sent after login.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from akoutpost.redirect import checkRedirect
from tests._fixtures import providerConfig


class SingleApplicationTests(SynchronousTestCase):
    provider = providerConfig(external_host="https://ext.t.goauthentik.io")

    def test_none(self) -> None:
        self.assertIsNone(checkRedirect(None, self.provider))
        self.assertIsNone(checkRedirect("", self.provider))

    def test_otherHost(self) -> None:
        self.assertIsNone(checkRedirect("https://google.com", self.provider))

    def test_validFull(self) -> None:
        url = "https://ext.t.goauthentik.io/test?foo"
        self.assertEqual(checkRedirect(url, self.provider), url)

    def test_validPartial(self) -> None:
        self.assertEqual(checkRedirect("/test?foo", self.provider), "https://ext.t.goauthentik.io/test?foo")

    def test_caseAndDefaultPort(self) -> None:
        self.assertIsNotNone(checkRedirect("https://EXT.t.goauthentik.io:443/x", self.provider))
        self.assertIsNotNone(checkRedirect("https://ext.t.goauthentik.io./x", self.provider))

    def test_rejected(self) -> None:
        for rd in [
            "//evil.com/x",
            "/\\evil.com",
            "\\\\evil.com",
            "https://ext.t.goauthentik.io@evil.com/",
            "https://user:pw@ext.t.goauthentik.io/",
            "http://ext.t.goauthentik.io/",  # other scheme
            "https://ext.t.goauthentik.io:8443/",  # other port
            "https://ext.t.goauthentik.io.evil.com/",
            "https://evilext.t.goauthentik.io/",
            "javascript:alert(1)",
            "data:text/html,hi",
            " /x",
            "/x\r\nSet-Cookie: a=b",
            "/\tx",
            "https:/\\evil.com",
            "https://ext.t.goauthentik.io:99999/",
            "ftp://ext.t.goauthentik.io/",
        ]:
            self.assertIsNone(checkRedirect(rd, self.provider), rd)


class DomainTests(SynchronousTestCase):
    provider = providerConfig(
        mode="forward_domain",
        external_host="https://auth.t.goauthentik.io",
        cookie_domain="t.goauthentik.io",
        internal_host=None,
    )

    def test_insideDomain(self) -> None:
        for rd in [
            "https://ext.t.goauthentik.io/test",
            "http://t.goauthentik.io/",
            "https://a.b.t.goauthentik.io:8443/x",
        ]:
            self.assertEqual(checkRedirect(rd, self.provider), rd)

    def test_outsideDomain(self) -> None:
        for rd in [
            "https://evilt.goauthentik.io/",
            "https://t.goauthentik.io.evil.com/",
            "https://goauthentik.io/",
            "https://x.t.goauthentik.io@evil.com/",
            "javascript://t.goauthentik.io/%0aalert(1)",
        ]:
            self.assertIsNone(checkRedirect(rd, self.provider), rd)


class RedirectPropertyTests(SynchronousTestCase):
    """
    Whatever C{rd} is, an accepted target is on the provider's own origin
    (single application) or inside the cookie domain (domain level).
    """

    @settings(max_examples=400, deadline=None, derandomize=True)
    @given(
        st.one_of(
            st.text(max_size=60),
            st.builds(
                lambda a, b: a + b,
                st.sampled_from(
                    [
                        "https://ext.t.goauthentik.io",
                        "/",
                        "//",
                        "https:",
                        "https://",
                        "\\\\",
                        "http://t.goauthentik.io",
                        "https://a.t.goauthentik.io",
                    ]
                ),
                st.text(max_size=40),
            ),
        )
    )
    def test_acceptedStaysOnOrigin(self, rd: str) -> None:
        single = SingleApplicationTests.provider
        accepted = checkRedirect(rd, single)
        if accepted is not None:
            parts = urlsplit(accepted)
            self.assertEqual((parts.scheme, parts.hostname, parts.port), ("https", "ext.t.goauthentik.io", None))
            self.assertFalse(set(accepted) & set("\\\r\n\t "))
        accepted = checkRedirect(rd, DomainTests.provider)
        if accepted is not None:
            host = urlsplit(accepted).hostname or ""
            self.assertTrue(host == "t.goauthentik.io" or host.endswith(".t.goauthentik.io"), accepted)
