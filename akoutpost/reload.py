# -*- test-case-name: tests.test_reload,tests.integration.test_reload -*-
"""
Live reload of the configuration file (SIGHUP).

The file is read and checked as at start-up, then the next state of every
outpost is built beside the running one: outposts added and removed,
providers added, removed, changed and unchanged (see
L{akoutpost.outpost.Outpost.prepare}), certificates read again, listeners
whose endpoint string changed.  New listeners are opened before anything is
swapped; only when all of that worked is the new state swapped in, in one
reactor turn, and the listeners that go are closed gracefully.  Any problem
(in the file, a certificate, a port that cannot be opened) refuses the whole
reload: each problem is logged and the running state stays as it was.

A listener that takes over the port of one that this reload closes (an
endpoint string changed on the same port, or a port moved between outposts)
cannot be opened first: the old one is closed, then the new one opened, and
if that fails the old one is opened again and the reload refused.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, DeferredLock, gatherResults
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor
from twisted.logger import Logger
from twisted.python.failure import Failure

from akoutpost.config import Config, ConfigError, ProviderConfig, loadConfig
from akoutpost.metrics import RELOAD_OUTCOMES

if TYPE_CHECKING:
    from akoutpost.service import AkOutpostService, Listener, OutpostPlan, OutpostService



def providerIdentity(config: ProviderConfig) -> tuple[str, str]:
    """
    What a provider is matched by across reloads: its client id and its
    external host (both unique within an outpost), not its position.
    """
    return (config.client_id, config.externalHostKey)


def sameProvider(old: ProviderConfig, new: ProviderConfig) -> bool:
    """
    Whether two provider configs are the same but for their position in
    the outpost's list.
    """
    return replace(new, index=old.index) == old


def sameClient(old: ProviderConfig, new: ProviderConfig) -> bool:
    """
    Whether the same OpenID client serves both: same issuer, client id and
    secret (its discovery and keys stay valid).
    """
    return (old.issuer, old.client_id, old.client_secret) == (new.issuer, new.client_id, new.client_secret)


def endpointAddress(description: str) -> tuple[str, int | str] | None:
    """
    The port (or UNIX socket path) a server endpoint string binds, or
    L{None} for any free port or when it cannot be told without listening.
    Interfaces are ignored: two listeners on one port number may clash.
    """
    reactor = MemoryReactor()
    try:
        serverFromString(reactor, description).listen(Factory.forProtocol(Protocol)).addErrback(lambda _: None)
    except Exception:  # noqa: BLE001 (each endpoint parser raises its own kinds)
        return None
    for server in (*reactor.tcpServers, *reactor.sslServers):
        if server[0]:
            return ("tcp", int(server[0]))
    for server in reactor.unixServers:
        return ("unix", os.path.abspath(server[0]))
    return None


def _names(items: Sequence[str]) -> str:
    return f"{len(items)}" + (f" ({', '.join(items)})" if items else "")


@dataclass
class ReloadSummary:
    """
    What a reload changed, for its log line.  Providers are named
    C{outpost/provider}.
    """

    outpostsAdded: list[str] = field(default_factory=list)
    outpostsRemoved: list[str] = field(default_factory=list)
    outpostsKept: list[str] = field(default_factory=list)
    providersAdded: list[str] = field(default_factory=list)
    providersRemoved: list[str] = field(default_factory=list)
    providersChanged: list[str] = field(default_factory=list)
    providersUnchanged: list[str] = field(default_factory=list)
    listenersOpened: list[str] = field(default_factory=list)
    listenersClosed: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return (
            f"outposts: {_names(self.outpostsAdded)} added, {_names(self.outpostsRemoved)} removed, "
            f"{len(self.outpostsKept)} kept; providers: {_names(self.providersAdded)} added, "
            f"{_names(self.providersRemoved)} removed, {_names(self.providersChanged)} changed, "
            f"{len(self.providersUnchanged)} unchanged; listeners: {_names(self.listenersOpened)} opened, "
            f"{_names(self.listenersClosed)} closed"
        )


@dataclass
class ReloadPlan:
    """
    The whole next state, built while the current one serves.

    @ivar kept: The outposts in both files, with their next state.
    @ivar added: New outposts, built but not started.
    @ivar removed: Running outposts that are not in the new file.
    """

    config: Config
    kept: list[tuple[OutpostService, OutpostPlan]] = field(default_factory=list)
    added: list[OutpostService] = field(default_factory=list)
    removed: list[OutpostService] = field(default_factory=list)

    @property
    def opening(self) -> list[Listener]:
        listeners = [listener for _, plan in self.kept for listener in plan.opening]
        return listeners + [listener for service in self.added for listener in service.allListeners]

    @property
    def closing(self) -> list[Listener]:
        listeners = [listener for _, plan in self.kept for listener in plan.closing]
        return listeners + [listener for service in self.removed for listener in service.allListeners]

    def summary(self) -> ReloadSummary:
        summary = ReloadSummary()
        for service in self.added:
            summary.outpostsAdded.append(service.config.key)
            summary.providersAdded.extend(f"{service.config.key}/{p.name}" for p in service.config.providers)
        for service in self.removed:
            summary.outpostsRemoved.append(service.config.key)
            summary.providersRemoved.extend(f"{service.config.key}/{p.name}" for p in service.config.providers)
        for service, plan in self.kept:
            key = service.config.key
            summary.outpostsKept.append(key)
            update = plan.update
            for names, into in (
                (update.added, summary.providersAdded),
                (update.removed, summary.providersRemoved),
                (update.changed, summary.providersChanged),
                (update.unchanged, summary.providersUnchanged),
            ):
                into.extend(f"{key}/{name}" for name in names)
        summary.listenersOpened = [f"{listener.where} {listener.description}" for listener in self.opening]
        summary.listenersClosed = [f"{listener.where} {listener.description}" for listener in self.closing]
        return summary


class ConfigReloader:
    """
    Reloads the configuration file of an L{AkOutpostService}, one reload at
    a time (a SIGHUP during a reload runs another one after it).

    @ivar counts: How many reloads were applied and refused.
    """

    log = Logger()

    def __init__(self, root: AkOutpostService, path: str) -> None:
        self.root = root
        self.path = path
        self.counts = dict.fromkeys(RELOAD_OUTCOMES, 0)
        self._lock = DeferredLock()

    def reload(self) -> Deferred[bool]:
        """
        Read the file again and apply it, or refuse it.

        @return: Fires with whether the new file was applied; never fails.
        """
        d = self._lock.run(lambda: Deferred.fromCoroutine(self._reload()))

        def failed(failure: Failure) -> bool:
            self.log.failure("configuration reload from {path} failed", failure, path=self.path)
            return False

        return d.addErrback(failed)

    async def _reload(self) -> bool:
        try:
            config = loadConfig(self.path)
            plan = self._plan(config)
            await self._open(plan)
        except ConfigError as e:
            self._refuse(e.problems)
            return False
        except Exception:
            self.log.failure("configuration reload from {path} failed", path=self.path)
            self._refuse(())
            return False
        summary = plan.summary()
        self._commit(plan)
        self.counts["applied"] += 1
        for service in self.root.outposts.values():
            service.outpost.metrics.configReloaded(True)
        self.log.info(
            "configuration reloaded from {path}: {summary}",
            path=self.path,
            summary=summary.describe(),
            outpostsAdded=summary.outpostsAdded,
            outpostsRemoved=summary.outpostsRemoved,
            outpostsKept=summary.outpostsKept,
            providersAdded=summary.providersAdded,
            providersRemoved=summary.providersRemoved,
            providersChanged=summary.providersChanged,
            providersUnchanged=summary.providersUnchanged,
        )
        return True

    def _refuse(self, problems: Iterable[str]) -> None:
        self.counts["refused"] += 1
        for service in self.root.outposts.values():
            service.outpost.metrics.configReloaded(False)
        count = 0
        for problem in problems:
            count += 1
            self.log.error("configuration not reloaded: {problem}", problem=problem)
        self.log.warn(
            "configuration reload from {path} refused ({count} problem(s)); the running configuration is unchanged",
            path=self.path,
            count=count,
        )

    def _plan(self, config: Config) -> ReloadPlan:
        """
        Build the next state of every outpost, without listening anywhere.

        @raise ConfigError: Listing every problem found while building
            (certificates), across outposts.
        """
        plan = ReloadPlan(config)
        problems: list[str] = []
        running = self.root.outposts
        for outpost in config.outposts:
            try:
                current = running.get(outpost.key)
                if current is None:
                    plan.added.append(self.root.newOutpost(outpost))
                else:
                    plan.kept.append((current, current.prepare(outpost)))
            except ConfigError as e:
                problems.extend(e.problems)
        keys = {outpost.key for outpost in config.outposts}
        plan.removed = [service for key, service in running.items() if key not in keys]
        if problems:
            raise ConfigError(problems)
        return plan

    async def _open(self, plan: ReloadPlan) -> None:
        """
        Open every new listener; on any failure close them again (and reopen
        those closed to free their port) and raise.

        @raise ConfigError: One problem per listener that could not be opened.
        """
        closing = plan.closing
        taken = {endpointAddress(listener.description) for listener in closing} - {None}
        fresh = [listener for listener in plan.opening if endpointAddress(listener.description) not in taken]
        takeovers = [listener for listener in plan.opening if listener not in fresh]
        opened: list[Listener] = []
        problems = self._listen(fresh, opened)
        if problems:
            await self._close(opened)
            raise ConfigError(problems)
        if not takeovers:
            return
        wanted = {endpointAddress(listener.description) for listener in takeovers}
        released = [listener for listener in closing if endpointAddress(listener.description) in wanted]
        await self._close(released)
        problems = self._listen(takeovers, opened)
        if problems:
            await self._close(opened)
            for listener in released:
                try:
                    listener.open()
                except Exception as e:  # noqa: BLE001 (whatever listening raised, it is reported)
                    self.log.error(
                        "{where}: cannot listen again on {endpoint}: {error}; it stays closed",
                        where=listener.where,
                        endpoint=listener.description,
                        error=str(e),
                    )
            raise ConfigError(problems)

    def _listen(self, listeners: Sequence[Listener], opened: list[Listener]) -> list[str]:
        problems = []
        for listener in listeners:
            try:
                listener.open()
            except Exception as e:  # noqa: BLE001 (whatever listening raised, it is reported)
                problems.append(f"{listener.where}: cannot listen on {listener.description!r}: {e}")
            else:
                opened.append(listener)
        return problems

    async def _close(self, listeners: Sequence[Listener]) -> None:
        await gatherResults([listener.closePort() for listener in listeners])

    def _commit(self, plan: ReloadPlan) -> None:
        """
        Swap the new state in.  Nothing here can fail for a reason the new
        file could have: everything was built and opened already.
        """
        root = self.root
        for service, outpostPlan in plan.kept:
            service.commit(outpostPlan)
        for service in plan.removed:
            root.removeOutpost(service)
        for service in plan.added:
            root.addOutpost(service)
        root.outposts = {outpost.key: root.outposts[outpost.key] for outpost in plan.config.outposts}
        root.config = plan.config
        root.agents.retune(p for outpost in plan.config.outposts for p in outpost.providers)
