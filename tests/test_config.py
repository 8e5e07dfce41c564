# -*- test-case-name: tests.test_config -*-
"""
Tests for L{akoutpost.config}.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from collections.abc import Mapping

from cryptography.hazmat.primitives import serialization
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from akoutpost.config import (
    DEFAULT_SCOPES,
    DEFAULT_TRUSTED_PROXIES,
    Config,
    ConfigError,
    OutpostConfig,
    ProviderConfig,
    hostKey,
    loadConfig,
    parseConfig,
)
from akoutpost.tls import generateSelfSigned

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "etc", "akoutpost.toml")

_DROP = object()


def provider(**overrides: object) -> dict[str, object]:
    """
    A valid proxy-mode provider table, with C{overrides} applied; an
    override of C{_DROP} removes the field.
    """
    table: dict[str, object] = {
        "name": "app",
        "external_host": "https://app.example.com",
        "internal_host": "http://127.0.0.1:8080",
        "issuer": "https://id.example.com/application/o/app/",
        "client_id": "app-client",
        "client_secret": "s3cret",
    }
    table.update(overrides)
    return {key: value for key, value in table.items() if value is not _DROP}


def config(*providers: dict[str, object], **outpost: object) -> dict[str, object]:
    """
    A file with one outpost C{main} holding C{providers} (one default
    provider if none is given) and the outpost fields C{outpost}.
    """
    return {"outposts": {"main": {**outpost, "providers": list(providers) or [provider()]}}}


class _ProblemAssertions(SynchronousTestCase):
    def assertProblem(self, data: Mapping[str, object], expected: str, baseDir: str = ".") -> ConfigError:
        """
        Assert that C{data} is rejected and that one problem line contains
        C{expected}.
        """
        error = self.assertRaises(ConfigError, parseConfig, data, baseDir)
        if not any(expected in line for line in error.problems):
            self.fail(f"no problem contains {expected!r}; problems were:\n{error}")
        return error

    def parseOne(self, **overrides: object) -> ProviderConfig:
        return parseConfig(config(provider(**overrides))).outposts[0].providers[0]


class ValidConfigTests(_ProblemAssertions):
    """
    A correct file becomes frozen dataclasses with authentik's defaults.
    """

    def test_minimalProviderDefaults(self) -> None:
        result = parseConfig(config())
        self.assertIsInstance(result, Config)
        [outpost] = result.outposts
        [app] = outpost.providers
        self.assertEqual(
            app,
            ProviderConfig(
                outpost="main",
                index=0,
                name="app",
                app_slug="app",
                mode="proxy",
                external_host="https://app.example.com",
                internal_host="http://127.0.0.1:8080",
                internal_host_ssl_validation=True,
                issuer="https://id.example.com/application/o/app/",
                client_id="app-client",
                client_secret="s3cret",
                cookie_secret="",
                cookie_domain="",
                skip_path_regex=(),
                scopes=("openid", "profile", "email", "entitlements", "ak_proxy"),
                access_token_validity=86400.0,
                intercept_header_auth=True,
                basic_auth_enabled=False,
                basic_auth_user_attribute="",
                basic_auth_password_attribute="",
                certificate="",
            ),
        )

    def test_outpostDefaults(self) -> None:
        [outpost] = parseConfig(config()).outposts
        self.assertEqual(outpost.key, "main")
        self.assertEqual(outpost.name, "main")
        self.assertEqual(outpost.http, "tcp:9000")
        self.assertEqual(outpost.https, "tcp:9443")
        self.assertEqual(outpost.metrics, "tcp:9300")
        self.assertEqual(
            [str(n) for n in outpost.trusted_proxies],
            ["127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fe80::/10", "::1/128"],
        )
        self.assertEqual(outpost.trusted_proxies, DEFAULT_TRUSTED_PROXIES)
        self.assertEqual(outpost.providers[0].scopes, DEFAULT_SCOPES)

    def test_frozen(self) -> None:
        [outpost] = parseConfig(config()).outposts
        self.assertRaises(AttributeError, setattr, outpost, "http", "tcp:1")
        self.assertRaises(AttributeError, setattr, outpost.providers[0], "client_id", "x")

    def test_everyFieldGiven(self) -> None:
        result = parseConfig(
            config(
                provider(
                    app_slug="the-app",
                    mode="forward_domain",
                    internal_host="",
                    internal_host_ssl_validation=False,
                    cookie_secret="cookie",
                    cookie_domain=".Example.COM",
                    scopes=["openid", "email"],
                    access_token_validity=3600,
                    intercept_header_auth=False,
                    basic_auth_enabled=True,
                    basic_auth_user_attribute="user",
                    basic_auth_password_attribute="password",
                ),
                name="Outpost",
                http="tcp:0",
                https="tcp:0:interface=127.0.0.1",
                metrics="unix:metrics.sock",
                trusted_proxies=["10.1.2.3/8", "2001:db8::1"],
            )
        )
        [outpost] = result.outposts
        self.assertEqual(
            (outpost.name, outpost.http, outpost.https, outpost.metrics),
            ("Outpost", "tcp:0", "tcp:0:interface=127.0.0.1", "unix:metrics.sock"),
        )
        self.assertEqual(
            outpost.trusted_proxies,
            (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::1/128")),
        )
        [app] = outpost.providers
        self.assertEqual(app.app_slug, "the-app")
        self.assertEqual(app.mode, "forward_domain")
        self.assertEqual(app.internal_host, "")
        self.assertIs(app.internal_host_ssl_validation, False)
        self.assertEqual(app.cookie_secret, "cookie")
        self.assertEqual(app.cookie_domain, "example.com")
        self.assertEqual(app.scopes, ("openid", "email"))
        self.assertEqual(app.access_token_validity, 3600.0)
        self.assertIsInstance(app.access_token_validity, float)
        self.assertIs(app.intercept_header_auth, False)
        self.assertIs(app.basic_auth_enabled, True)
        self.assertEqual(app.basic_auth_user_attribute, "user")
        self.assertEqual(app.basic_auth_password_attribute, "password")

    def test_outpostsInFileOrderAndProviderIndex(self) -> None:
        data = {
            "outposts": {
                "zeta": {"providers": [provider()]},
                "alpha": {
                    "http": "tcp:9001",
                    "providers": [
                        provider(name="one", client_id="1", external_host="https://one.example"),
                        provider(name="two", client_id="2", external_host="https://two.example"),
                    ],
                },
            }
        }
        result = parseConfig(data)
        self.assertEqual([o.key for o in result.outposts], ["zeta", "alpha"])
        self.assertEqual(result.outposts[0].http, "tcp:9000")
        self.assertEqual(result.outposts[1].http, "tcp:9001")
        self.assertEqual(
            [(p.outpost, p.index, p.name) for p in result.outposts[1].providers],
            [("alpha", 0, "one"), ("alpha", 1, "two")],
        )

    def test_emptyListenerStringTurnsTheDefaultOff(self) -> None:
        [outpost] = parseConfig(config(http="", https="tcp:0")).outposts
        self.assertIsNone(outpost.http)
        self.assertEqual(outpost.https, "tcp:0")

    def test_externalHostTrailingSlashDropped(self) -> None:
        app = self.parseOne(external_host="https://app.example.com/")
        self.assertEqual(app.external_host, "https://app.example.com")

    def test_issuerKeptExactly(self) -> None:
        app = self.parseOne(issuer="https://ID.example.com/application/o/app/")
        self.assertEqual(app.issuer, "https://ID.example.com/application/o/app/")

    def test_forwardModesNeedNoInternalHost(self) -> None:
        app = self.parseOne(mode="forward_single", internal_host=_DROP)
        self.assertEqual((app.mode, app.internal_host), ("forward_single", ""))

    def test_cookieDomainCoversParentDomain(self) -> None:
        app = self.parseOne(external_host="https://app.sub.example.com", cookie_domain="example.com")
        self.assertEqual(app.cookie_domain, "example.com")
        app = self.parseOne(external_host="https://example.com", cookie_domain="example.com")
        self.assertEqual(app.cookie_domain, "example.com")

    def test_sameHostAndClientInTwoOutposts(self) -> None:
        data = {"outposts": {"a": {"providers": [provider()]}, "b": {"http": "tcp:9001", "providers": [provider()]}}}
        result = parseConfig(data)
        self.assertEqual(
            [o.providers[0].externalHostKey for o in result.outposts],
            ["app.example.com", "app.example.com"],
        )

    def test_portZeroNeverClashes(self) -> None:
        data = {
            "outposts": {
                "a": {"http": "tcp:0", "metrics": "tcp:0", "providers": [provider()]},
                "b": {"http": "tcp:0", "providers": [provider()]},
            }
        }
        self.assertEqual(len(parseConfig(data).outposts), 2)

    def test_samePortOnDifferentInterfaces(self) -> None:
        data = {
            "outposts": {
                "a": {"http": "tcp:9000:interface=127.0.0.1", "providers": [provider()]},
                "b": {"http": "tcp:9000:interface=127.0.0.2", "providers": [provider()]},
            }
        }
        self.assertEqual(len(parseConfig(data).outposts), 2)

    def test_trustedProxiesMayBeEmpty(self) -> None:
        [outpost] = parseConfig(config(trusted_proxies=[])).outposts
        self.assertEqual(outpost.trusted_proxies, ())


class DerivedFieldTests(_ProblemAssertions):
    """
    Values derived from C{external_host} and C{client_id}.
    """

    def keyOf(self, externalHost: str) -> str:
        return self.parseOne(external_host=externalHost).externalHostKey

    def test_externalHostKeyLowercasesAndDropsTrailingDot(self) -> None:
        self.assertEqual(self.keyOf("https://App.Example.COM./"), "app.example.com")

    def test_externalHostKeyOmitsDefaultPort(self) -> None:
        self.assertEqual(self.keyOf("https://app.example.com:443"), "app.example.com")
        self.assertEqual(self.keyOf("http://app.example.com:80"), "app.example.com")

    def test_externalHostKeyKeepsOtherPorts(self) -> None:
        self.assertEqual(self.keyOf("https://app.example.com:8443"), "app.example.com:8443")
        self.assertEqual(self.keyOf("http://app.example.com:443"), "app.example.com:443")
        self.assertEqual(self.keyOf("https://app.example.com:80"), "app.example.com:80")

    def test_externalHostKeyIPv6(self) -> None:
        self.assertEqual(self.keyOf("https://[2001:DB8::1]"), "[2001:db8::1]")
        self.assertEqual(self.keyOf("https://[2001:db8::1]:443"), "[2001:db8::1]")
        self.assertEqual(self.keyOf("http://[::1]:8080/"), "[::1]:8080")

    def test_externalHostKeyIPv4(self) -> None:
        self.assertEqual(self.keyOf("http://127.0.0.1:8000"), "127.0.0.1:8000")

    def test_hostKey(self) -> None:
        """
        L{hostKey} is the normalisation behind C{externalHostKey}, for
        other hosts to be compared with it.
        """
        self.assertEqual(hostKey("https", "APP.example.com.", 443), "app.example.com")
        self.assertEqual(hostKey("HTTP", "app.example.com", 80), "app.example.com")
        self.assertEqual(hostKey("http", "app.example.com", None), "app.example.com")
        self.assertEqual(hostKey("http", "::1", 9000), "[::1]:9000")
        self.assertEqual(hostKey("", "app.example.com", 443), "app.example.com:443")

    def test_schemeAndPath(self) -> None:
        app = self.parseOne(external_host="HTTPS://app.example.com/sub/")
        self.assertEqual(app.externalScheme, "https")
        self.assertEqual(app.externalPath, "/sub")
        app = self.parseOne(external_host="http://app.example.com")
        self.assertEqual(app.externalScheme, "http")
        self.assertEqual(app.externalPath, "")

    def test_cookieName(self) -> None:
        """
        The cookie name is authentik's: a prefix and the first 8 hex digits
        of the SHA-256 of the client id.
        """
        app = self.parseOne(client_id="abc")
        self.assertEqual(app.cookieName, "authentik_proxy_ba7816bf")
        app = self.parseOne(client_id="wiki")
        self.assertEqual(app.cookieName, "authentik_proxy_" + hashlib.sha256(b"wiki").hexdigest()[:8])


class SkipPathRegexTests(_ProblemAssertions):
    """
    C{skip_path_regex} is compiled once, one pattern a non-blank line.
    """

    def test_blankLinesIgnoredAndPatternsCompiled(self) -> None:
        app = self.parseOne(skip_path_regex="\n^/public/\r\n   \n\t^/health$  \r\n\n")
        self.assertEqual([p.pattern for p in app.skip_path_regex], ["^/public/", "^/health$"])
        self.assertTrue(all(isinstance(p, re.Pattern) for p in app.skip_path_regex))
        self.assertIsNotNone(app.skip_path_regex[0].search("/public/x.css"))
        self.assertIsNone(app.skip_path_regex[1].search("/healthz"))

    def test_onlyBlankLines(self) -> None:
        self.assertEqual(self.parseOne(skip_path_regex="\n \r\n\n").skip_path_regex, ())

    def test_invalidPattern(self) -> None:
        self.assertProblem(
            config(provider(skip_path_regex="^/ok/\n\n^/(broken\n")),
            "outpost 'main', provider 'app' (#1), field 'skip_path_regex': line 3, '^/(broken': "
            "missing ), unterminated subpattern",
        )


class SecretTests(_ProblemAssertions):
    """
    Secrets come inline or from files next to the configuration.
    """

    def setUp(self) -> None:
        self.directory = FilePath(self.mktemp())
        self.directory.makedirs()

    def test_clientSecretFileRelativeToBaseDir(self) -> None:
        self.directory.child("client").setContent(b"from-a-file\n")
        self.directory.child("cookie").setContent(b"cookie-key\r\n")
        data = config(provider(client_secret=_DROP, client_secret_file="client", cookie_secret_file="cookie"))
        app = parseConfig(data, self.directory).outposts[0].providers[0]
        self.assertEqual(app.client_secret, "from-a-file")
        self.assertEqual(app.cookie_secret, "cookie-key")

    def test_absoluteSecretFile(self) -> None:
        self.directory.child("client").setContent(b"abs")
        data = config(provider(client_secret=_DROP, client_secret_file=self.directory.child("client").path))
        self.assertEqual(parseConfig(data).outposts[0].providers[0].client_secret, "abs")

    def test_unreadableSecretFile(self) -> None:
        missing = self.directory.child("missing").path
        data = config(provider(client_secret=_DROP, client_secret_file="missing"))
        self.assertProblem(
            data,
            f"outpost 'main', provider 'app' (#1), field 'client_secret_file': cannot read {missing!r}: "
            "No such file or directory",
            self.directory.path,
        )

    def test_emptySecretFile(self) -> None:
        self.directory.child("client").setContent(b"\n")
        data = config(provider(client_secret=_DROP, client_secret_file="client"))
        self.assertProblem(
            data,
            f"field 'client_secret_file': {self.directory.child('client').path!r} is empty",
            self.directory.path,
        )

    def test_bothInlineAndFile(self) -> None:
        self.assertProblem(
            config(provider(client_secret_file="x")),
            "outpost 'main', provider 'app' (#1), field 'client_secret': set either 'client_secret' or "
            "'client_secret_file', not both",
        )
        self.assertProblem(
            config(provider(cookie_secret="a", cookie_secret_file="x")),
            "field 'cookie_secret': set either",
        )

    def test_neitherInlineNorFile(self) -> None:
        self.assertProblem(
            config(provider(client_secret=_DROP)),
            "outpost 'main', provider 'app' (#1), field 'client_secret': required (or 'client_secret_file')",
        )

    def test_emptyClientSecret(self) -> None:
        self.assertProblem(config(provider(client_secret="")), "field 'client_secret': must not be empty")

    def test_certificateRelativeToBaseDir(self) -> None:
        pair = generateSelfSigned(["app.example.com"])
        self.directory.child("app.pem").setContent(
            pair.certificate.public_bytes(serialization.Encoding.PEM)
            + pair.key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        app = parseConfig(config(provider(certificate="app.pem")), self.directory).outposts[0].providers[0]
        self.assertEqual(app.certificate, self.directory.child("app.pem").path)


class ProblemTests(_ProblemAssertions):
    """
    Every kind of mistake is reported on a line naming the outpost, the
    provider and the field.
    """

    def test_unknownTopLevelKey(self) -> None:
        data = {**config(), "outpost": {}}
        self.assertProblem(data, "field 'outpost': unknown field (did you mean 'outposts'?)")

    def test_unknownOutpostField(self) -> None:
        self.assertProblem(
            config(trusted_proxy_cidrs=[]),
            "outpost 'main', field 'trusted_proxy_cidrs': unknown field (did you mean 'trusted_proxies'?)",
        )

    def test_unknownProviderField(self) -> None:
        self.assertProblem(
            config(provider(skip_path_regexp="")),
            "outpost 'main', provider 'app' (#1), field 'skip_path_regexp': unknown field "
            "(did you mean 'skip_path_regex'?)",
        )

    def test_unknownFieldWithoutHint(self) -> None:
        error = self.assertProblem(config(provider(zzz=1)), "field 'zzz': unknown field")
        self.assertNotIn("did you mean", str(error))

    def test_missingRequiredFields(self) -> None:
        for field in ("name", "external_host", "issuer", "client_id"):
            self.assertProblem(config(provider(**{field: _DROP})), f"field {field!r}: required")

    def test_unnamedProviderIsNumbered(self) -> None:
        data = config(provider(), provider(name=_DROP, client_id="2", external_host="https://b.example"))
        self.assertProblem(data, "outpost 'main', provider #2, field 'name': required")

    def test_emptyName(self) -> None:
        self.assertProblem(config(provider(name="")), "provider #1, field 'name': must not be empty")

    def test_internalHostRequiredInProxyMode(self) -> None:
        self.assertProblem(
            config(provider(internal_host=_DROP)),
            "outpost 'main', provider 'app' (#1), field 'internal_host': required in proxy mode",
        )

    def test_wrongTypes(self) -> None:
        cases = [
            ("name", 1, "must be a string, not an integer"),
            ("external_host", ["https://a"], "must be a string, not an array"),
            ("intercept_header_auth", "yes", "must be true or false, not a string"),
            ("basic_auth_enabled", 1, "must be true or false, not an integer"),
            ("access_token_validity", "1h", "must be a number, not a string"),
            ("access_token_validity", True, "must be a number, not a boolean"),
            ("scopes", "openid", "must be an array of strings, not a string"),
            ("scopes", ["openid", 2], "must be an array of strings, but item 2 is an integer"),
            ("skip_path_regex", ["^/a"], "must be a string, not an array"),
        ]
        for field, value, message in cases:
            self.assertProblem(config(provider(**{field: value})), f"field {field!r}: {message}")

    def test_wrongOutpostTypes(self) -> None:
        self.assertProblem(config(http=9000), "outpost 'main', field 'http': must be a string, not an integer")
        self.assertProblem(
            config(trusted_proxies="10.0.0.0/8"),
            "outpost 'main', field 'trusted_proxies': must be an array of strings, not a string",
        )
        self.assertProblem({"outposts": {"main": "x"}}, "outpost 'main': must be a table, not a string")
        self.assertProblem({"outposts": []}, "field 'outposts': must be a table, not an array")

    def test_badURLs(self) -> None:
        cases = [
            ("ftp://app.example.com", "is not an http or https URL"),
            ("app.example.com", "is not an http or https URL"),
            ("https://", "has no host"),
            ("https://:443/", "has no host"),
            ("https://./", "has no host"),
            ("https://app.example.com:99999", "is not a valid URL: Port out of range"),
            ("https://app.example.com:http", "is not a valid URL: Port could not be cast"),
            ("https://[::1/", "is not a valid URL: Invalid IPv6 URL"),
            ("https://user:pw@app.example.com", "must not contain a user name or password"),
            ("https://app.example.com/?a=b", "must not have a query or fragment"),
            ("https://app.example.com/?", "must not have a query or fragment"),
            ("https://app.example.com/#top", "must not have a query or fragment"),
            ("https://app.example.com/a b", "contains whitespace"),
        ]
        for field in ("external_host", "internal_host", "issuer"):
            for url, message in cases:
                self.assertProblem(
                    config(provider(**{field: url})),
                    f"outpost 'main', provider 'app' (#1), field {field!r}: {url!r} {message}",
                )

    def test_badMode(self) -> None:
        self.assertProblem(
            config(provider(mode="forward_domian")),
            "field 'mode': must be one of proxy, forward_single, forward_domain, not 'forward_domian' "
            "(did you mean 'forward_domain'?)",
        )

    def test_forwardDomainNeedsCookieDomain(self) -> None:
        self.assertProblem(
            config(provider(mode="forward_domain")),
            "outpost 'main', provider 'app' (#1), field 'cookie_domain': required in forward_domain mode",
        )

    def test_cookieDomainMustCoverExternalHost(self) -> None:
        self.assertProblem(
            config(provider(cookie_domain="other.com")),
            "field 'cookie_domain': 'other.com' covers neither the external host 'app.example.com'",
        )
        # A plain suffix without a dot boundary does not count.
        self.assertProblem(
            config(provider(cookie_domain="ample.com")), "field 'cookie_domain': 'ample.com' covers neither"
        )

    def test_scopesMustContainOpenid(self) -> None:
        self.assertProblem(
            config(provider(scopes=["profile"])),
            "outpost 'main', provider 'app' (#1), field 'scopes': must contain 'openid'",
        )
        self.assertProblem(config(provider(scopes=["openid", "a b"])), "field 'scopes': 'a b' is not a scope name")

    def test_accessTokenValidityMustBePositive(self) -> None:
        for value in (0, -1, float("inf"), float("nan")):
            self.assertProblem(
                config(provider(access_token_validity=value)),
                "field 'access_token_validity': must be a positive number of seconds",
            )

    def test_noOutposts(self) -> None:
        self.assertProblem({}, "no outposts")
        self.assertProblem({"outposts": {}}, "no outposts")

    def test_outpostWithoutProviders(self) -> None:
        self.assertProblem(
            {"outposts": {"main": {}}},
            "outpost 'main', field 'providers': at least one provider is required",
        )
        self.assertProblem({"outposts": {"main": {"providers": []}}}, "field 'providers': at least one")
        self.assertProblem(
            {"outposts": {"main": {"providers": {"name": "x"}}}},
            "outpost 'main', field 'providers': must be an array of tables, not a table",
        )
        self.assertProblem(
            {"outposts": {"main": {"providers": ["x"]}}},
            "outpost 'main', provider #1: must be a table, not a string",
        )

    def test_unparseableEndpoint(self) -> None:
        self.assertProblem(
            config(http="tcp:nine"),
            "outpost 'main', field 'http': invalid endpoint 'tcp:nine': ValueError:",
        )
        self.assertProblem(config(metrics="tcp:9300:colour=blue"), "outpost 'main', field 'metrics': invalid endpoint")
        self.assertProblem(
            config(https="ssl:nine"),
            "outpost 'main', field 'https': invalid endpoint",
        )
        self.assertProblem(
            config(https="ssl:0:privateKey=/nonexistent/key.pem"),
            "outpost 'main', field 'https': 'ssl:0:privateKey=/nonexistent/key.pem': name certificates in the "
            "'certificate' fields",
        )

    def test_unsupportedEndpointType(self) -> None:
        self.assertProblem(
            config(http="stdio:"),
            "outpost 'main', field 'http': endpoint type 'stdio' in 'stdio:' is not supported",
        )
        self.assertProblem(config(http="9000"), "field 'http': endpoint type '9000'")

    def test_twoOutpostsOnOnePort(self) -> None:
        data = {
            "outposts": {
                "a": {"http": "tcp:9100", "providers": [provider()]},
                "b": {"https": "tcp:9100:interface=127.0.0.1", "providers": [provider()]},
            }
        }
        self.assertProblem(data, "outpost 'b', field 'https': port 9100 is also used by outpost 'a', field 'http'")

    def test_defaultPortClash(self) -> None:
        data = {
            "outposts": {
                "a": {"providers": [provider()]},
                "b": {"http": "tcp:port=9000:interface=\\:\\:1", "providers": [provider()]},
            }
        }
        self.assertProblem(data, "outpost 'b', field 'http': port 9000 is also used by outpost 'a', field 'http'")

    def test_twoListenersOfOneOutpostOnOnePort(self) -> None:
        self.assertProblem(
            config(http="tcp:9100:interface=127.0.0.1", metrics="tcp:9100:interface=127.0.0.1"),
            "outpost 'main', field 'metrics': port 9100 is also used by outpost 'main', field 'http'",
        )

    def test_twoListenersOnOneUnixSocket(self) -> None:
        self.assertProblem(
            config(http="unix:/tmp/ak.sock", metrics="unix:/tmp/ak.sock"),
            "outpost 'main', field 'metrics': socket '/tmp/ak.sock' is also used by outpost 'main', field 'http'",
        )

    def test_duplicateHostInOneOutpost(self) -> None:
        data = config(
            provider(name="one", client_id="1", external_host="https://app.example.com"),
            provider(name="two", client_id="2", external_host="https://APP.example.com:443/other"),
        )
        self.assertProblem(
            data,
            "outpost 'main', provider 'two' (#2), field 'external_host': host 'app.example.com' is also "
            "used by provider 'one' (#1)",
        )

    def test_duplicateClientIdInOneOutpost(self) -> None:
        data = config(
            provider(name="one", client_id="same", external_host="https://one.example.com"),
            provider(name="two", client_id="same", external_host="https://two.example.com"),
        )
        self.assertProblem(
            data, "outpost 'main', provider 'two' (#2), field 'client_id': also used by provider 'one' (#1)"
        )

    def test_invalidTrustedProxy(self) -> None:
        self.assertProblem(
            config(trusted_proxies=["10.0.0.0/8", "10.0.0.0/33", "nope"]),
            "outpost 'main', field 'trusted_proxies': '10.0.0.0/33' is not a network in CIDR notation",
        )
        self.assertProblem(
            config(trusted_proxies=["nope"]),
            "outpost 'main', field 'trusted_proxies': 'nope' is not a network",
        )

    def test_metricsListenerDefaults(self) -> None:
        """
        Only the first outpost has a metrics listener by default (authentik's
        9300); C{""} turns it off, and a later outpost cannot take its port.
        """
        data = {
            "outposts": {
                "a": {"providers": [provider()]},
                "b": {"http": "tcp:9100", "providers": [provider(external_host="https://b.example")]},
            }
        }
        self.assertEqual([o.metrics for o in parseConfig(data).outposts], ["tcp:9300", None])
        [outpost] = parseConfig(config(metrics="")).outposts
        self.assertIsNone(outpost.metrics)
        data["outposts"]["b"]["metrics"] = "tcp:9300"
        self.assertProblem(data, "outpost 'b', field 'metrics': port 9300 is also used by outpost 'a', field 'metrics'")

    def test_laterOutpostsMustNameAListener(self) -> None:
        data = {"outposts": {"a": {"providers": [provider()]}, "b": {"metrics": "tcp:9301", "providers": [provider()]}}}
        self.assertProblem(data, "outpost 'b', field 'http': required: only the first outpost listens on tcp:9000")

    def test_outpostWithNoListenerAtAll(self) -> None:
        self.assertProblem(config(http="", https=""), "outpost 'main', field 'http': the outpost has neither")

    def test_severalProblemsAtOnce(self) -> None:
        data = {
            "outposts": {
                "main": {
                    "htp": "tcp:9000",
                    "trusted_proxies": ["bogus"],
                    "providers": [
                        provider(client_id=_DROP, issuer="ftp://id"),
                        provider(name=_DROP, mode="nope", client_id="2", external_host="https://b.example"),
                    ],
                },
                "other": {"providers": []},
            }
        }
        error = self.assertRaises(ConfigError, parseConfig, data)
        expected = [
            "outpost 'main', field 'htp': unknown field (did you mean 'http'?)",
            "outpost 'main', field 'trusted_proxies': 'bogus' is not a network",
            "outpost 'main', provider 'app' (#1), field 'issuer': 'ftp://id' is not an http",
            "outpost 'main', provider 'app' (#1), field 'client_id': required",
            "outpost 'main', provider #2, field 'name': required",
            "outpost 'main', provider #2, field 'mode': must be one of",
            "outpost 'other', field 'http': required",
            "outpost 'other', field 'providers': at least one provider is required",
        ]
        for line in expected:
            self.assertTrue(any(line in p for p in error.problems), f"{line!r} not in:\n{error}")
        self.assertEqual(len(error.problems), len(expected), str(error))
        self.assertEqual(str(error), "\n".join(error.problems))


class LimitTests(_ProblemAssertions):
    """
    The proxy's limits and timeouts: body size and upstream timeouts per
    provider, the client-side limits per outpost.
    """

    def test_defaults(self) -> None:
        [outpost] = parseConfig(config()).outposts
        self.assertEqual((outpost.header_timeout, outpost.max_header_size, outpost.idle_timeout), (10.0, 16384, 60.0))
        [app] = outpost.providers
        self.assertEqual(app.max_body_size, 0)
        self.assertEqual(
            (app.upstream_connect_timeout, app.upstream_response_timeout, app.upstream_idle_timeout), (10.0, 60.0, 50.0)
        )

    def test_given(self) -> None:
        data = config(
            provider(
                max_body_size=1_048_576,
                upstream_connect_timeout=2,
                upstream_response_timeout=0.5,
                upstream_idle_timeout=4.5,
            ),
            header_timeout=3,
            max_header_size=8192,
            idle_timeout=30.5,
        )
        [outpost] = parseConfig(data).outposts
        self.assertEqual((outpost.header_timeout, outpost.max_header_size, outpost.idle_timeout), (3.0, 8192, 30.5))
        [app] = outpost.providers
        self.assertEqual(app.max_body_size, 1_048_576)
        self.assertEqual(
            (app.upstream_connect_timeout, app.upstream_response_timeout, app.upstream_idle_timeout), (2.0, 0.5, 4.5)
        )
        self.assertIsInstance(outpost.header_timeout, float)
        self.assertIsInstance(app.max_body_size, int)

    def test_badTimeouts(self) -> None:
        where = {
            "upstream_connect_timeout": "outpost 'main', provider 'app' (#1), ",
            "upstream_response_timeout": "outpost 'main', provider 'app' (#1), ",
            "upstream_idle_timeout": "outpost 'main', provider 'app' (#1), ",
            "header_timeout": "outpost 'main', ",
            "idle_timeout": "outpost 'main', ",
        }
        for field, prefix in where.items():
            for value, message in (
                (0, "must be a positive number of seconds"),
                (-1, "must be a positive number of seconds"),
                (float("inf"), "must be a positive number of seconds"),
                (float("nan"), "must be a positive number of seconds"),
                ("10s", "must be a number, not a string"),
                (True, "must be a number, not a boolean"),
            ):
                data = config(provider(**{field: value})) if "provider" in prefix else config(**{field: value})
                self.assertProblem(data, f"{prefix}field {field!r}: {message}")

    def test_badMaxBodySize(self) -> None:
        prefix = "outpost 'main', provider 'app' (#1), field 'max_body_size': "
        self.assertProblem(
            config(provider(max_body_size=-1)), prefix + "must be a number of bytes (0 for no limit), not -1"
        )
        self.assertProblem(config(provider(max_body_size=1.5)), prefix + "must be a whole number, not a float")
        self.assertProblem(config(provider(max_body_size="10M")), prefix + "must be a whole number, not a string")
        self.assertProblem(config(provider(max_body_size=False)), prefix + "must be a whole number, not a boolean")

    def test_badMaxHeaderSize(self) -> None:
        prefix = "outpost 'main', field 'max_header_size': "
        self.assertProblem(config(max_header_size=1023), prefix + "must be at least 1024 bytes, not 1023")
        self.assertProblem(config(max_header_size=0), prefix + "must be at least 1024 bytes, not 0")
        self.assertProblem(config(max_header_size=16384.0), prefix + "must be a whole number, not a float")
        self.assertEqual(parseConfig(config(max_header_size=1024)).outposts[0].max_header_size, 1024)

    def test_unknownFieldHints(self) -> None:
        self.assertProblem(
            config(provider(max_body_sise=1)),
            "outpost 'main', provider 'app' (#1), field 'max_body_sise': unknown field (did you mean 'max_body_size'?)",
        )
        self.assertProblem(
            config(provider(upstream_conect_timeout=1)),
            "field 'upstream_conect_timeout': unknown field (did you mean 'upstream_connect_timeout'?)",
        )
        self.assertProblem(
            config(header_timout=1),
            "outpost 'main', field 'header_timout': unknown field (did you mean 'header_timeout'?)",
        )
        self.assertProblem(
            config(idle_timeout_seconds=1),
            "outpost 'main', field 'idle_timeout_seconds': unknown field (did you mean 'idle_timeout'?)",
        )

    def test_everyProblemReported(self) -> None:
        error = self.assertRaises(
            ConfigError,
            parseConfig,
            config(provider(max_body_size=-5, upstream_idle_timeout=0), header_timeout=-1, max_header_size=10),
        )
        self.assertEqual(len(error.problems), 4, error)


class ConfigErrorTests(SynchronousTestCase):
    def test_problemsAndString(self) -> None:
        error = ConfigError(["one", "two"])
        self.assertEqual(error.problems, ("one", "two"))
        self.assertEqual(str(error), "one\ntwo")

    def test_singleString(self) -> None:
        self.assertEqual(ConfigError("only one").problems, ("only one",))


class LoadConfigTests(SynchronousTestCase):
    """
    L{loadConfig} reads a TOML file and names it when it cannot.
    """

    def test_exampleConfig(self) -> None:
        """
        The example shipped in C{etc/} is valid and shows two outposts.
        """
        result = loadConfig(EXAMPLE)
        self.assertEqual([o.key for o in result.outposts], ["main", "internal"])
        main, internal = result.outposts
        self.assertEqual((main.http, internal.http), ("tcp:9000", "tcp:9001"))
        self.assertEqual(len(main.providers), 2)
        self.assertEqual(len(internal.providers), 1)

    def test_exampleShowsEveryField(self) -> None:
        """
        Every field the parser knows appears in the example, at least as a
        commented-out line.
        """
        with open(EXAMPLE, encoding="utf-8") as f:
            text = f.read()
        fields = [f.name for f in ProviderConfig.__dataclass_fields__.values()]
        fields += [f.name for f in OutpostConfig.__dataclass_fields__.values()]
        fields += ["client_secret_file", "cookie_secret_file"]
        for field in set(fields) - {"outpost", "index", "key", "providers"}:
            if not re.search(rf"(?m)^(# )?{field} = ", text):
                self.fail(f"{field!r} is not shown in {EXAMPLE}")

    def test_relativeFilesBesideTheConfig(self) -> None:
        directory = FilePath(self.mktemp())
        directory.makedirs()
        directory.child("secret").setContent(b"from-file\n")
        directory.child("akoutpost.toml").setContent(
            b'[[outposts.main.providers]]\nname = "app"\nexternal_host = "https://app.example.com"\n'
            b'internal_host = "http://127.0.0.1:1"\nissuer = "https://id.example.com/"\n'
            b'client_id = "app"\nclient_secret_file = "secret"\n'
        )
        result = loadConfig(directory.child("akoutpost.toml").path)
        self.assertEqual(result.outposts[0].providers[0].client_secret, "from-file")

    def test_missingFile(self) -> None:
        path = self.mktemp()
        error = self.assertRaises(ConfigError, loadConfig, path)
        self.assertEqual(error.problems, (f"{path}: cannot read the configuration file: No such file or directory",))

    def test_invalidTOML(self) -> None:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write("[outposts.main\n")
        error = self.assertRaises(ConfigError, loadConfig, path)
        [problem] = error.problems
        self.assertTrue(problem.startswith(f"{path}: invalid TOML: "), problem)

    def test_problemsInFile(self) -> None:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write("[outposts.main]\nhttp = 1\n")
        error = self.assertRaises(ConfigError, loadConfig, path)
        self.assertIn("outpost 'main', field 'http': must be a string, not an integer", error.problems)
