"""The SandboxSessionRepository contract, run against in-memory, SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from uuid import UUID, uuid4

import pytest

from domain.errors import SandboxServiceError, SessionConflictError
from domain.sandbox import CapScope, SandboxCaps, SandboxSession, SandboxStatus

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def session(
    chat_id: UUID | None = None,
    *,
    created: timedelta = timedelta(0),
    expires: timedelta = timedelta(minutes=15),
    status: SandboxStatus = SandboxStatus.RUNNING,
    session_id: UUID | None = None,
) -> SandboxSession:
    return SandboxSession(
        session_id=session_id or uuid4(),
        chat_id=chat_id or uuid4(),
        container_id=f"c-{uuid4().hex[:8]}",
        status=status,
        created_at=T0 + created,
        expires_at=T0 + expires,
        runtime_kind="docker",
    )


def test_save_then_get_returns_an_equal_session_with_every_field(repository) -> None:
    stored = SandboxSession(
        session_id=uuid4(),
        chat_id=uuid4(),
        container_id="0123456789abcdef" * 4,
        status=SandboxStatus.RUNNING,
        created_at=T0,
        expires_at=T0 + timedelta(minutes=15),
        runtime_kind="qemu",
        last_activity_at=T0 + timedelta(seconds=7, microseconds=123456),
        max_expires_at=T0 + timedelta(hours=4),
        packages=("pandas>=2.0", "npm:lodash@4.17.21"),
        owner="alice",
        node="node-a",
    )
    repository.save(stored)
    assert repository.get(stored.session_id) == stored
    assert repository.get_active_by_chat_id(stored.chat_id) == stored


def test_a_session_without_packages_reads_back_with_none(repository) -> None:
    stored = session()
    repository.save(stored)
    fetched = repository.get(stored.session_id)
    assert fetched is not None and fetched.packages == ()


def test_times_keep_their_instant_whatever_zone_went_in(repository) -> None:
    plus_two = timezone(timedelta(hours=2))
    local = session()
    local = SandboxSession(
        **{
            **local.__dict__,
            "created_at": datetime(2026, 3, 1, 14, 0, tzinfo=plus_two),
            "expires_at": datetime(2026, 3, 1, 14, 15, tzinfo=plus_two),
        }
    )
    repository.save(local)
    loaded = repository.get(local.session_id)
    assert loaded.created_at == T0 and loaded.expires_at == T0 + timedelta(minutes=15)
    assert loaded.created_at.utcoffset() is not None


def test_unknown_ids_give_none(repository) -> None:
    assert repository.get(uuid4()) is None
    assert repository.get_active_by_chat_id(uuid4()) is None


def test_save_with_the_same_session_id_replaces_the_record(repository) -> None:
    first = session()
    repository.save(first)
    renewed = first.renewed(T0 + timedelta(minutes=5), timedelta(minutes=15)).marked_dead()
    repository.save(renewed)
    assert repository.get(first.session_id) == renewed
    assert repository.get_active_by_chat_id(first.chat_id) == renewed
    assert repository.list_sessions() == [renewed]


def test_dead_record_is_still_the_chats_current_one(repository) -> None:
    dead = session(status=SandboxStatus.DEAD)
    repository.save(dead)
    assert repository.get_active_by_chat_id(dead.chat_id) == dead


def test_a_second_current_record_for_a_chat_is_refused(repository) -> None:
    chat_id = uuid4()
    first = session(chat_id)
    repository.save(first)
    with pytest.raises(SessionConflictError) as raised:
        repository.save(session(chat_id, status=SandboxStatus.DEAD))
    assert isinstance(raised.value, SandboxServiceError)
    assert repository.get_active_by_chat_id(chat_id) == first
    assert repository.list_sessions() == [first]


def test_after_delete_the_chat_may_get_a_new_session(repository) -> None:
    chat_id = uuid4()
    first = session(chat_id)
    repository.save(first)
    repository.delete(first.session_id)
    second = session(chat_id)
    repository.save(second)
    assert repository.get(first.session_id) is None
    assert repository.get_active_by_chat_id(chat_id) == second


def test_delete_is_idempotent(repository) -> None:
    kept = session()
    repository.save(kept)
    repository.delete(uuid4())
    repository.delete(kept.session_id)
    repository.delete(kept.session_id)
    assert repository.get(kept.session_id) is None


def test_list_expired_includes_the_boundary_and_dead_ones_in_deadline_order(repository) -> None:
    later = session(expires=timedelta(minutes=10))
    boundary = session(expires=timedelta(minutes=20))
    earliest_dead = session(expires=timedelta(minutes=5), status=SandboxStatus.DEAD)
    live = session(expires=timedelta(minutes=20, microseconds=1))
    for record in (later, boundary, live, earliest_dead):
        repository.save(record)
    now = T0 + timedelta(minutes=20)
    assert repository.list_expired(now) == [earliest_dead, later, boundary]
    assert repository.list_expired(T0) == []


def test_list_sessions_orders_by_creation_then_id_filters_and_pages(repository) -> None:
    same_time = [session(created=timedelta(seconds=1), session_id=UUID(int=n)) for n in (3, 1, 2)]
    first = session(created=timedelta(0), status=SandboxStatus.DEAD)
    last = session(created=timedelta(seconds=2))
    for record in (last, *same_time, first):
        repository.save(record)
    ordered = [first, *sorted(same_time, key=lambda s: str(s.session_id)), last]
    assert repository.list_sessions() == ordered
    assert repository.list_sessions(limit=2, offset=1) == ordered[1:3]
    assert repository.list_sessions(offset=10) == []
    assert repository.list_sessions(status=SandboxStatus.DEAD) == [first]
    assert repository.list_sessions(status=SandboxStatus.RUNNING, limit=1) == [ordered[1]]


def test_concurrent_saves_for_one_chat_leave_exactly_one_record(repository) -> None:
    chat_id = uuid4()
    candidates = [session(chat_id) for _ in range(8)]
    barrier = threading.Barrier(len(candidates))
    outcomes: list[str] = []

    def save(candidate: SandboxSession) -> None:
        barrier.wait()
        try:
            repository.save(candidate)
            outcomes.append("saved")
        except SessionConflictError:
            outcomes.append("conflict")

    threads = [threading.Thread(target=save, args=(c,)) for c in candidates]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["conflict"] * 7 + ["saved"]
    current = repository.get_active_by_chat_id(chat_id)
    assert current in candidates
    assert repository.list_sessions() == [current]


def _owned(owner: str, node: str, status: SandboxStatus = SandboxStatus.RUNNING, **kw):
    return replace(session(status=status, **kw), owner=owner, node=node)


def test_list_sessions_filters_by_owner(repository) -> None:
    alice = [_owned("alice", "a", created=timedelta(seconds=i)) for i in range(3)]
    bob = _owned("bob", "a")
    for stored in (*alice, bob):
        repository.save(stored)
    assert repository.list_sessions(owner="alice") == alice
    assert repository.list_sessions(owner="alice", limit=1, offset=1) == alice[1:2]
    assert repository.list_sessions(owner="bob") == [bob]
    assert repository.list_sessions(owner="carol") == []
    assert len(repository.list_sessions()) == 4


def test_count_running_counts_one_nodes_running_records_per_owner(repository) -> None:
    for stored in (
        _owned("alice", "a"),
        _owned("alice", "a", expires=timedelta(seconds=-5)),  # expired, not yet swept
        _owned("bob", "a"),
        _owned("alice", "a", status=SandboxStatus.DEAD),
        _owned("alice", "b"),
    ):
        repository.save(stored)
    assert repository.count_running("a") == 3
    assert repository.count_running("a", "alice") == 2
    assert repository.count_running("a", "carol") == 0
    assert repository.count_running("b") == 1
    assert repository.count_running("c") == 0


def on(node: str, owner: str, status: SandboxStatus = SandboxStatus.RUNNING) -> SandboxSession:
    return replace(session(status=status), node=node, owner=owner)


def test_save_within_inserts_while_the_node_and_the_owner_have_room(repository) -> None:
    caps = SandboxCaps(on_node=3, per_owner=2)
    assert repository.save_within(on("a", "alice"), caps) is None
    assert repository.save_within(on("a", "alice", SandboxStatus.DEAD), caps) is None
    assert repository.save_within(on("b", "alice"), SandboxCaps(on_node=1)) is None
    assert repository.save_within(on("a", "alice"), caps) is None
    refused = on("a", "alice")
    assert repository.save_within(refused, caps) is CapScope.OWNER
    assert repository.get(refused.session_id) is None
    assert repository.save_within(on("a", "bob"), caps) is None
    assert repository.save_within(on("a", "carol"), caps) is CapScope.NODE
    # Dead records and other nodes' do not count; a record saved within caps reads back whole.
    assert repository.count_running("a") == 3
    free = replace(on("c", "dave"), packages=("numpy",), last_activity_at=T0)
    assert repository.save_within(free, SandboxCaps()) is None
    assert repository.get(free.session_id) == free


def test_save_within_keeps_one_current_record_per_chat(repository) -> None:
    first = on("a", "alice")
    repository.save_within(first, SandboxCaps(on_node=5))
    with pytest.raises(SessionConflictError):
        repository.save_within(replace(on("a", "alice"), chat_id=first.chat_id), SandboxCaps())


def test_get_many_reads_the_records_that_exist(repository) -> None:
    stored = [session() for _ in range(3)]
    for record in stored:
        repository.save(record)
    found = repository.get_many([stored[0].session_id, stored[2].session_id, uuid4()])
    assert sorted(found, key=lambda s: str(s.session_id)) == sorted(
        [stored[0], stored[2]], key=lambda s: str(s.session_id)
    )
    assert repository.get_many([]) == []
