"""Sandbox lifecycle use cases: create or reuse, get, renew, destroy, list, and the expiry sweep.

Rules shared by all of them:
- Every step that changes a chat's sandbox runs under that chat's lifecycle lock, so one chat's
  requests are serialized and two concurrent creates make one sandbox.
- A chat has at most one current session. It is *usable* when RUNNING and not expired.
- An expired session is replaced silently (idle chats lose state by design); a DEAD one is
  replaced too, and callers that run code are told the state was lost.
"""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from uuid import UUID, uuid4

from domain.environment import (
    PACKAGE_LANGUAGES,
    Environment,
    merged_packages,
    missing_packages,
    recorded_environment,
    recorded_packages,
)
from domain.errors import (
    EnvironmentsUnsupportedError,
    LockTimeoutError,
    SandboxGoneError,
    SandboxLimitError,
    SandboxNotFoundError,
    WrongNodeError,
)
from domain.execution import Language
from domain.sandbox import CapScope, SandboxCaps, SandboxSession, SandboxStatus, capped_deadline
from domain.tenant import OPERATOR, Caller
from usecase.environment import EnvironmentProvisioning
from usecase.ports import (
    Clock,
    Logger,
    SandboxKiller,
    SandboxLifecycleLocker,
    SandboxRuntime,
    SandboxSessionRepository,
    WarmSandboxSource,
)


def _new_session_id() -> UUID:
    return uuid4()


def session_attrs(session: SandboxSession) -> dict[str, str | int | float | bool]:
    return {
        "chat_id": str(session.chat_id),
        "session_id": str(session.session_id),
        "container_id": session.container_id,
    }


@dataclass(frozen=True)
class Lifetime:
    """How long sandboxes live: ``ttl`` idle (sliding), ``max_lifetime`` in all (None: no cap).

    ``renew_slack`` is ExecuteCode's: a renewal writes ``now + ttl + renew_slack`` and the next
    ones within the slack write nothing. A new sandbox starts with the same deadline, so the
    renewal after a new chat's first execution writes nothing either (one database write less
    on the path of a new chat's first result); the deadline is never shorter than ``ttl``.
    """

    ttl: timedelta
    max_lifetime: timedelta | None = None
    renew_slack: timedelta = timedelta(0)


@dataclass(frozen=True)
class Placement:
    """Where new sandboxes go and how many may live there.

    ``node`` is this host's name, recorded in every session it creates. ``max_sandboxes``
    caps RUNNING sandboxes on the node, ``max_per_owner`` a tenant's on the node (None: no
    cap). Counted in the session store, so replicas on one node sharing it count the same ones.
    Only a new chat is refused: replacing an existing chat's sandbox stops the old one first.
    At the cap no chat's sandbox is evicted to make room (one key must not be able to erase
    another's idle state); the caller retries after sandboxes expire or are deleted. Warm pool
    members count against ``max_sandboxes`` too (usecase/pool_budget.py) but never make a chat
    wait: the chat claims one, or idle ones are evicted to admit it; only RUNNING records are
    checked here, so a claimed member is counted once, as the chat's.
    """

    node: str = ""
    max_sandboxes: int | None = None
    max_per_owner: int | None = None


def on_node(session: SandboxSession, node: str | None) -> bool:
    """True when ``node`` (None: any) runs the session; records without a node predate nodes
    and count as every node's."""
    return node is None or not session.node or session.node == node


def not_found(chat_id: UUID) -> SandboxNotFoundError:
    # The same words whether the chat has no sandbox or another tenant's: nothing leaks.
    return SandboxNotFoundError(f"chat {chat_id} has no sandbox")


def check_access(session: SandboxSession | None, caller: Caller) -> SandboxSession | None:
    """The session if the caller may see it; another tenant's chat raises as a missing one."""
    if session is not None and not caller.may_access(session.owner):
        raise not_found(session.chat_id)
    return session


@dataclass(frozen=True)
class EnsuredSandbox:
    session: SandboxSession
    replaced_dead: bool


NO_ENVIRONMENTS = "package environments are not available on this runtime"


class SandboxProvisioner:
    """Ensure-or-replace logic shared by CreateSandbox and ExecuteCode.

    Callers hold the chat's lock. Not a use case of its own: it never takes the lock.

    Packages: a chat asks for an Environment (a language and packages; the base one has none).
    - Without a sandbox, the chat gets one started from that environment (built or found by the
      EnvironmentStore); the base environment goes through ``SandboxRuntime.create`` as always.
    - A usable sandbox that lacks some requested packages gets them installed into it, keeping
      its state; its session then records them.
    - A replacement (expired, dead) starts from the environment of everything the old session
      recorded plus the request, so nothing installed before is lost but the state.
    Packages on a runtime wired without ``environments`` raise EnvironmentsUnsupportedError
    (``no_environments_reason``); packages off the allow-list raise PackageNotAllowedError before
    anything is touched.
    """

    def __init__(
        self,
        repository: SandboxSessionRepository,
        runtime: SandboxRuntime,
        clock: Clock,
        logger: Logger,
        lifetime: Lifetime,
        environments: EnvironmentProvisioning | None = None,
        no_environments_reason: str = NO_ENVIRONMENTS,
        warm: WarmSandboxSource | None = None,
        placement: Placement | None = None,
    ) -> None:
        self._repository = repository
        self._runtime = runtime
        self._clock = clock
        self._logger = logger
        self._lifetime = lifetime
        self._environments = environments
        self._no_environments_reason = no_environments_reason
        self._warm = warm
        self._placement = placement or Placement()

    def check(self, environment: Environment) -> None:
        """Refuse a request for packages this service will not provide (before any lock)."""
        if environment.is_base:
            return
        if self._environments is None:
            raise EnvironmentsUnsupportedError(self._no_environments_reason)
        self._environments.allow_list.check(environment)

    def ensure(
        self,
        chat_id: UUID,
        environment: Environment | None = None,
        caller: Caller = OPERATOR,
        *,
        running_code: bool = False,
    ) -> EnsuredSandbox:
        """Reuse the chat's usable session, or replace an expired or dead one, or create one.

        Another tenant's chat raises SandboxNotFoundError, one whose sandbox runs on another
        node WrongNodeError, a new chat past a cap SandboxLimitError. ``running_code``: the
        caller runs code in it at once, so a new sandbox's record says so (``last_activity_at``)
        from the start (the renewal after that code then has nothing to write), and reuse is
        logged at debug level (the caller's code_executed names the session).
        """
        wanted = environment or Environment(Language.PYTHON)
        self.check(wanted)
        now = self._clock.now()
        current = check_access(self._repository.get_active_by_chat_id(chat_id), caller)
        if current is None:
            return EnsuredSandbox(
                self._create(
                    chat_id,
                    now,
                    recorded_packages(wanted),
                    caller.tenant,
                    running_code,
                    new_chat=True,
                ),
                replaced_dead=False,
            )
        self.check_node(current)
        if current.is_usable(now):
            log = self._logger.debug if running_code else self._logger.info
            log("sandbox_reused", session_attrs(current))
            try:
                return EnsuredSandbox(self._add_packages(current, wanted), replaced_dead=False)
            except SandboxGoneError:
                # Died under us: replaced (with the packages), and the caller told state was lost.
                self._logger.warning("sandbox_found_dead", session_attrs(current))
                replaced = self.replace(current, wanted, running_code=running_code)
                return EnsuredSandbox(replaced, replaced_dead=True)
        dead = current.status is SandboxStatus.DEAD
        if dead:
            self._logger.warning("sandbox_found_dead", session_attrs(current))
        return EnsuredSandbox(
            self.replace(current, wanted, running_code=running_code), replaced_dead=dead
        )

    def replace(
        self,
        current: SandboxSession,
        environment: Environment | None = None,
        *,
        running_code: bool = False,
    ) -> SandboxSession:
        """Stop the current sandbox (idempotent), drop its record, and create a fresh one with
        the packages it had plus the requested ones.

        If stopping fails the record is kept and the error propagates: nothing leaks.
        """
        packages = current.packages
        if environment is not None:
            packages = merged_packages(packages, environment)
        self.check_node(current)
        self._runtime.stop(current.container_id)
        self._repository.delete(current.session_id)
        self._logger.info("sandbox_replaced", session_attrs(current))
        return self._create(
            current.chat_id, self._clock.now(), packages, current.owner, running_code
        )

    def check_node(self, session: SandboxSession) -> None:
        """Refuse to touch a sandbox another node runs (this node's runtime cannot reach it).
        Records from before nodes were recorded ("") count as this node's."""
        if session.node and session.node != self._placement.node:
            raise WrongNodeError(
                f"chat {session.chat_id}: its sandbox runs on node {session.node!r}, "
                f"this is node {self._placement.node!r}; send the request there",
                session.node,
            )

    def _check_capacity(self, owner: str) -> None:
        """Before a sandbox is started on demand: refuse when the node or the tenant is at its
        cap (nothing is started to be thrown away). The save checks again, in one step with
        the insert (``save_within``), so racing creates on any replica cannot pass a cap."""
        placement = self._placement
        for cap, scope, owner_filter in (
            (placement.max_sandboxes, CapScope.NODE, None),
            (placement.max_per_owner, CapScope.OWNER, owner),
        ):
            if (
                cap is not None
                and self._repository.count_running(placement.node, owner_filter) >= cap
            ):
                raise self._refused(scope, owner)

    def _refused(self, scope: CapScope, owner: str) -> SandboxLimitError:
        placement = self._placement
        if scope is CapScope.NODE:
            where, cap = "this host", placement.max_sandboxes
        else:
            where, cap = "this API key on this host", placement.max_per_owner
        self._logger.warning(
            "sandbox_limit_reached",
            {"node": placement.node, "owner": owner, "scope": where, "limit": cap or 0},
        )
        return SandboxLimitError(
            f"{where} is at its limit of {cap} sandboxes; retry after one expires or is deleted"
        )

    def _record(self, session: SandboxSession, pooled: bool, owner: str) -> None:
        """Save a new sandbox's record within the caps (one write); if it cannot be saved the
        sandbox is stopped, or a pool member given back to its pool when a cap refused it."""
        warm = self._warm if pooled else None
        caps = SandboxCaps(self._placement.max_sandboxes, self._placement.max_per_owner)
        try:
            full = self._repository.save_within(session, caps)
        except Exception:
            # Without a record nobody would ever stop this sandbox; reconciliation would, but
            # only at the next sweep.
            self._runtime.stop(session.container_id)
            if warm is not None:
                warm.settle(session.session_id)
            raise
        if full is None:
            if warm is not None:
                warm.settle(session.session_id)  # its chat's record counts it now
            return
        # Concurrent creates (on any replica) took the room, or a claimed member met a full
        # cap: nothing was saved. A member goes back to its pool, untouched by any chat.
        if warm is not None:
            warm.give_back(session.session_id)
        else:
            self._runtime.stop(session.container_id)
        raise self._refused(full, owner)

    def _add_packages(self, current: SandboxSession, wanted: Environment) -> SandboxSession:
        missing = missing_packages(current.packages, wanted)
        if missing.is_base:
            return current
        assert self._environments is not None  # check() refused packages without them
        self._environments.runtime.install_packages(current.container_id, missing)
        updated = replace(current, packages=merged_packages(current.packages, missing))
        self._repository.save(updated)
        self._logger.info(
            "sandbox_packages_installed",
            {**session_attrs(updated), "packages": " ".join(recorded_packages(missing))},
        )
        return updated

    def _claim_warm(
        self,
        chat_id: UUID,
        now: datetime,
        expires_at: datetime,
        packages: tuple[str, ...],
        owner: str,
        new_chat: bool,
    ) -> SandboxSession | None:
        """A warm pool's member for exactly these packages (the base environment: none), or
        None: then a new chat's caps are checked before anything is started (a replacement is
        never refused for them: it stopped the old sandbox first), and the pools make room in
        the host's cap for the sandbox created on demand. A claimed member is checked against
        the caps by the save alone (one round trip); refused, it goes back to its pool."""
        pooled = None
        if self._warm is not None:
            pooled = self._warm.claim(
                chat_id=chat_id, created_at=now, expires_at=expires_at, packages=packages
            )
        if pooled is None:
            if new_chat:
                self._check_capacity(owner)
            if self._warm is not None:
                self._warm.make_room()
        return pooled

    def _create(
        self,
        chat_id: UUID,
        now: datetime,
        packages: tuple[str, ...] = (),
        owner: str = "",
        running_code: bool = False,
        *,
        new_chat: bool = False,
    ) -> SandboxSession:
        max_expires_at = (
            None if self._lifetime.max_lifetime is None else now + self._lifetime.max_lifetime
        )
        expires_at = capped_deadline(
            now + self._lifetime.ttl + self._lifetime.renew_slack, max_expires_at
        )
        with_packages = [
            env
            for env in (recorded_environment(packages, lang) for lang in PACKAGE_LANGUAGES)
            if not env.is_base
        ]
        pooled = self._claim_warm(chat_id, now, expires_at, packages, owner, new_chat)
        if pooled is not None:
            session = pooled
        elif not with_packages:
            session = self._runtime.create(
                session_id=_new_session_id(),
                chat_id=chat_id,
                created_at=now,
                expires_at=expires_at,
            )
        else:
            if self._environments is None:
                raise EnvironmentsUnsupportedError(self._no_environments_reason)
            # One environment is the image; a second language's packages (rare) go in live.
            built = self._environments.store.ensure(with_packages[0])
            session = self._environments.runtime.create_from(
                built,
                session_id=_new_session_id(),
                chat_id=chat_id,
                created_at=now,
                expires_at=expires_at,
            )
            try:
                for extra in with_packages[1:]:
                    self._environments.runtime.install_packages(session.container_id, extra)
            except Exception:
                self._runtime.stop(session.container_id)
                raise
            session = replace(session, packages=packages)
        if max_expires_at is not None:
            session = replace(session, max_expires_at=max_expires_at)
        session = replace(
            session,
            owner=owner,
            node=self._placement.node,
            last_activity_at=now if running_code else None,
        )
        self._record(session, pooled is not None, owner)
        attrs = session_attrs(session)
        if pooled is not None:
            attrs["pooled"] = True
        self._logger.info("sandbox_created", attrs)
        return session


@dataclass(frozen=True)
class CreateSandboxCommand:
    """``packages`` are requirements for ``language`` (npm names for JavaScript)."""

    chat_id: UUID
    packages: tuple[str, ...] = ()
    language: Language = Language.PYTHON
    caller: Caller = OPERATOR


class CreateSandbox:
    """Give a chat its sandbox: reuse the usable one, replace an expired or dead one, or create.

    Logs ``sandbox_reused``, or ``sandbox_replaced`` then ``sandbox_created``, or
    ``sandbox_created``. A runtime that fails to create leaves no record behind.
    """

    def __init__(
        self,
        repository: SandboxSessionRepository,
        locker: SandboxLifecycleLocker,
        runtime: SandboxRuntime,
        clock: Clock,
        logger: Logger,
        ttl: timedelta,
        max_lifetime: timedelta | None = None,
        environments: EnvironmentProvisioning | None = None,
        no_environments_reason: str = NO_ENVIRONMENTS,
        warm: WarmSandboxSource | None = None,
        placement: Placement | None = None,
        provisioner: SandboxProvisioner | None = None,
    ) -> None:
        self._locker = locker
        # The composition root hands in the one provisioner it wires; built here otherwise
        # (the user's contract constructs CreateSandbox from its parts).
        self._provisioner = provisioner or SandboxProvisioner(
            repository,
            runtime,
            clock,
            logger,
            Lifetime(ttl, max_lifetime),
            environments,
            no_environments_reason,
            warm,
            placement,
        )

    def execute(self, command: CreateSandboxCommand) -> SandboxSession:
        # Validated (InvalidPackageError) and checked before the lock: a refused request waits
        # for nothing and changes nothing.
        environment = Environment(command.language, command.packages)
        self._provisioner.check(environment)
        with self._locker.lock(command.chat_id):
            return self._provisioner.ensure(command.chat_id, environment, command.caller).session


class GetSandbox:
    """The chat's current session (RUNNING or DEAD). Raises SandboxNotFoundError when none (or
    when it is another tenant's)."""

    def __init__(self, repository: SandboxSessionRepository) -> None:
        self._repository = repository

    def execute(self, chat_id: UUID, caller: Caller = OPERATOR) -> SandboxSession:
        session = check_access(self._repository.get_active_by_chat_id(chat_id), caller)
        if session is None:
            raise not_found(chat_id)
        return session


class ListSandboxes:
    """Page through session records, optionally of one status: the caller's own chats, or every
    chat for an admin."""

    def __init__(self, repository: SandboxSessionRepository) -> None:
        self._repository = repository

    def execute(
        self,
        status: SandboxStatus | None = None,
        limit: int = 100,
        offset: int = 0,
        caller: Caller = OPERATOR,
    ) -> list[SandboxSession]:
        return self._repository.list_sessions(
            status=status, limit=limit, offset=offset, owner=caller.listing_owner
        )


class RenewSandbox:
    """Slide a usable session's idle deadline to now + ttl, capped by its maximum lifetime, and
    never back: a later deadline already stored (ExecuteCode's renewal slack) is kept.

    Raises SandboxNotFoundError when the chat has no usable session (none, expired or dead):
    renewing cannot bring back a sandbox that is gone.
    """

    def __init__(
        self,
        repository: SandboxSessionRepository,
        locker: SandboxLifecycleLocker,
        clock: Clock,
        logger: Logger,
        ttl: timedelta,
    ) -> None:
        self._repository = repository
        self._locker = locker
        self._clock = clock
        self._logger = logger
        self._ttl = ttl

    def execute(self, chat_id: UUID, caller: Caller = OPERATOR) -> SandboxSession:
        with self._locker.lock(chat_id):
            now = self._clock.now()
            current = check_access(self._repository.get_active_by_chat_id(chat_id), caller)
            if current is None or not current.is_usable(now):
                raise SandboxNotFoundError(f"chat {chat_id} has no usable sandbox to renew")
            # Never earlier than the stored deadline: ExecuteCode may have stored one up to its
            # renewal slack past now + ttl.
            renewed = replace(
                current,
                expires_at=max(
                    current.expires_at, capped_deadline(now + self._ttl, current.max_expires_at)
                ),
            )
            self._repository.save(renewed)
            self._logger.info(
                "sandbox_renewed",
                {**session_attrs(renewed), "expires_at": renewed.expires_at.isoformat()},
            )
            return renewed


class DestroySandbox:
    """Stop the chat's sandbox and delete its record. Idempotent: returns None when none.

    If the runtime fails to stop it, the record is kept (so a later sweep retries) and the error
    propagates. Another tenant's chat raises SandboxNotFoundError, a sandbox of another node
    WrongNodeError (records of nodes other than ``node`` are left alone).
    """

    def __init__(
        self,
        repository: SandboxSessionRepository,
        locker: SandboxLifecycleLocker,
        runtime: SandboxRuntime,
        logger: Logger,
        node: str = "",
    ) -> None:
        self._repository = repository
        self._locker = locker
        self._runtime = runtime
        self._logger = logger
        self._node = node

    def execute(self, chat_id: UUID, caller: Caller = OPERATOR) -> SandboxSession | None:
        with self._locker.lock(chat_id):
            current = check_access(self._repository.get_active_by_chat_id(chat_id), caller)
            if current is None:
                return None
            if current.node and current.node != self._node:
                raise WrongNodeError(
                    f"chat {chat_id}: its sandbox runs on node {current.node!r}, this is node "
                    f"{self._node!r}; send the request there",
                    current.node,
                )
            self._runtime.stop(current.container_id)
            self._repository.delete(current.session_id)
            self._logger.info("sandbox_destroyed", session_attrs(current))
            return current


class CleanupExpiredSandboxes:
    """Stop and delete every session whose ``expires_at`` has passed.

    For each expired snapshot: take the chat's lock, re-read, and skip it if it was replaced or
    renewed meanwhile. A failing stop logs ``sandbox_clean_failed`` (``error`` = exception class
    name), keeps the record for the next sweep, and the sweep goes on. Returns what was cleaned.

    A chat whose lock is busy (a long execution holds it) is skipped this round
    (``sandbox_clean_skipped_busy``), not waited for: give this use case a locker with a short
    wait (the service does). With ``node`` set, only records of that node (and older records
    without one) are cleaned: another node's sandboxes are beyond this node's runtime.

    With an ``executor`` the sandboxes are cleaned in parallel, as many at a time as it has
    workers (the service wires a bounded pool): each one still under its own chat's lock with
    the re-read, so a backlog costs the slowest stops rather than the sum of all of them.
    Without one (the default) they are cleaned one after another on the caller's thread.

    A runtime that is also a SandboxKiller is asked to ``kill`` (processes gone now, object
    removed in the background) rather than ``stop``.
    """

    def __init__(
        self,
        repository: SandboxSessionRepository,
        locker: SandboxLifecycleLocker,
        runtime: SandboxRuntime,
        clock: Clock,
        logger: Logger,
        executor: Executor | None = None,
        node: str | None = None,
    ) -> None:
        self._repository = repository
        self._locker = locker
        self._runtime = runtime
        self._clock = clock
        self._logger = logger
        self._executor = executor
        self._node = node

    def execute(self) -> list[SandboxSession]:
        expired = [
            snapshot
            for snapshot in self._repository.list_expired(self._clock.now())
            if on_node(snapshot, self._node)
        ]
        if self._executor is None or len(expired) < 2:
            outcomes = [self._clean_unless_busy(snapshot) for snapshot in expired]
        else:
            outcomes = list(self._executor.map(self._clean_unless_busy, expired))
        return [session for session in outcomes if session is not None]

    def _clean_unless_busy(self, snapshot: SandboxSession) -> SandboxSession | None:
        try:
            return self._clean(snapshot)
        except LockTimeoutError:
            self._logger.info("sandbox_clean_skipped_busy", session_attrs(snapshot))
            return None

    def _clean(self, snapshot: SandboxSession) -> SandboxSession | None:
        with self._locker.lock(snapshot.chat_id):
            current = self._repository.get_active_by_chat_id(snapshot.chat_id)
            if (
                current is None
                or current.session_id != snapshot.session_id
                or not current.is_expired(self._clock.now())
            ):
                return None
            try:
                self._end(current.container_id)
            except Exception as exc:
                # Any failure, including a bug in an adapter: one bad sandbox must not stop
                # the sweep for all the others.
                self._logger.error(
                    "sandbox_clean_failed",
                    {**session_attrs(current), "error": type(exc).__name__},
                )
                return None
            self._repository.delete(current.session_id)
            self._logger.info("sandbox_cleaned", session_attrs(current))
            return current

    def _end(self, container_id: str) -> None:
        # A runtime that can kill now and remove later: the record goes once nothing runs.
        if isinstance(self._runtime, SandboxKiller):
            self._runtime.kill(container_id)
        else:
            self._runtime.stop(container_id)
