from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest

from domain.errors import InvalidChatIdError, UnsupportedLanguageError
from domain.execution import Language
from domain.sandbox import SandboxSession, SandboxStatus, parse_chat_id

NOW = datetime(2026, 4, 2, 12, 0, tzinfo=UTC)


def session(**overrides) -> SandboxSession:
    values: dict[str, Any] = dict(
        session_id=UUID(int=1),
        chat_id=UUID(int=2),
        container_id="c",
        status=SandboxStatus.RUNNING,
        created_at=NOW,
        expires_at=NOW + timedelta(minutes=5),
    )
    values.update(overrides)
    return SandboxSession(**values)


def test_sessions_compare_by_value() -> None:
    assert session() == session()
    assert session() != session(container_id="other")


def test_a_session_is_expired_from_its_deadline_on() -> None:
    assert not session().is_expired(NOW + timedelta(minutes=5) - timedelta(microseconds=1))
    assert session().is_expired(NOW + timedelta(minutes=5))


def test_a_dead_session_is_not_usable_even_before_its_deadline() -> None:
    assert session().is_usable(NOW)
    assert not session().marked_dead().is_usable(NOW)


def test_renewal_slides_and_respects_the_cap() -> None:
    capped = session(max_expires_at=NOW + timedelta(minutes=7))
    assert capped.renewed(
        NOW + timedelta(minutes=1), timedelta(minutes=5)
    ).expires_at == NOW + timedelta(minutes=6)
    later = capped.renewed(NOW + timedelta(minutes=4), timedelta(minutes=5))
    assert later.expires_at == NOW + timedelta(minutes=7)
    assert later.last_activity_at == NOW + timedelta(minutes=4)


@pytest.mark.parametrize(
    ("spelling", "language"),
    [
        ("python", Language.PYTHON),
        ("PY", Language.PYTHON),
        ("js", Language.JAVASCRIPT),
        ("node", Language.JAVASCRIPT),
        ("bash", Language.SHELL),
        (" shell ", Language.SHELL),
    ],
)
def test_languages_parse_with_aliases(spelling: str, language: Language) -> None:
    assert Language.parse(spelling) is language


def test_an_unknown_language_names_the_supported_ones() -> None:
    with pytest.raises(UnsupportedLanguageError, match="python, javascript, shell"):
        Language.parse("cobol")


def test_chat_ids_parse_in_any_uuid_spelling() -> None:
    chat = uuid4()
    assert parse_chat_id(str(chat)) == chat
    assert parse_chat_id(chat.hex.upper()) == chat
    assert parse_chat_id(chat) is chat


@pytest.mark.parametrize("bad", ["", "not-a-uuid", "1234", "11111111-1111-1111-1111-11111111111g"])
def test_malformed_chat_ids_are_rejected(bad: str) -> None:
    with pytest.raises(InvalidChatIdError):
        parse_chat_id(bad)
