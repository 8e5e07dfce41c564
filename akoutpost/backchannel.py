# -*- test-case-name: tests.test_backchannel -*-
"""
OpenID Connect Back-Channel Logout 1.0: what the endpoint needs besides the
token checks of L{akoutpost.tokens.checkLogoutClaims}.

The provider POSTs a logout token to
C{<external_host>/outpost.goauthentik.io/backchannel-logout}; the provider's
application (L{akoutpost.application.Application.backchannelLogout}) verifies
it, refuses a replayed C{jti} with L{SeenTokens}, and ends the matching
sessions of its outpost.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.internet.interfaces import IReactorTime

#: The largest request body accepted at the endpoint.
MAX_LOGOUT_BODY = 64 * 1024
#: How many token ids one provider remembers at most.
MAX_SEEN_TOKENS = 10_000


@dataclass
class SeenTokens:
    """
    The C{jti} of every logout token accepted, each until the token could no
    longer be accepted anyway; bounded by dropping the ones closest to
    expiry when full.
    """

    clock: IReactorTime
    maxEntries: int = MAX_SEEN_TOKENS
    _seen: dict[str, float] = field(default_factory=dict)

    def remember(self, jti: str, until: float) -> bool:
        """
        Record C{jti} as used until C{until}.

        @return: L{False} if it was already recorded (a replay).
        """
        now = self.clock.seconds()
        known = self._seen.get(jti)
        if known is not None and known > now:
            return False
        if len(self._seen) >= self.maxEntries:
            for old in [k for k, expiry in self._seen.items() if expiry <= now]:
                del self._seen[old]
        while len(self._seen) >= self.maxEntries:
            del self._seen[min(self._seen, key=self._seen.__getitem__)]
        self._seen[jti] = until
        return True

    def __len__(self) -> int:
        return len(self._seen)
