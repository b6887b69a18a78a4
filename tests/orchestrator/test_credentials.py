"""Tokens, scopes and agents' keys (orchestrator/credentials.py), in milliseconds."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest

from orchestrator.agent_keys import AgentKeys
from orchestrator.credentials import (
    GRANTS,
    Scope,
    TokenConfigError,
    local_secret,
    parse_tokens,
    redacted,
)
from orchestrator.store import JobStore


def test_tokens_carry_their_scopes_and_what_those_grant() -> None:
    tokens = parse_tokens("a" * 20, "read=r" + "x" * 20 + ", submit+metrics=s" + "y" * 20)
    assert tokens["a" * 20].scopes == frozenset(Scope)
    assert tokens["r" + "x" * 20].scopes == {Scope.read}
    assert tokens["s" + "y" * 20].scopes == {Scope.submit, Scope.read, Scope.metrics}
    assert Scope.agent not in GRANTS[Scope.submit]  # submitting never enrolls agents


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("read", "scope[+scope]=secret"),
        ("read=short", "at least 16"),
        ("root=" + "x" * 20, "scopes are admin, submit, read, agent, metrics"),
    ],
)
def test_a_bad_tokens_setting_says_what_is_wrong(entry: str, says: str) -> None:
    with pytest.raises(TokenConfigError, match=re.escape(says)):
        parse_tokens(None, entry)


def test_no_token_configured_means_none() -> None:
    assert parse_tokens(None, None) == {} and parse_tokens("", " , ") == {}


def test_an_agents_key_names_it_and_only_its_latest_key_works() -> None:
    keys = AgentKeys(JobStore("sqlite://").engine)
    first = keys.issue("runner-0123456789ab")
    assert first.startswith("lba.runner-0123456789ab.")
    assert keys.verify(first) == "runner-0123456789ab"
    second = keys.issue("runner-0123456789ab")
    assert keys.verify(first) is None and keys.verify(second) == "runner-0123456789ab"
    # Another agent's id with this secret, a truncated key, a token: nobody.
    forged = second.replace("runner-0123456789ab", "runner-ba9876543210")
    for bad in (forged, second[:-1], "lba.", "lba.runner-0123456789ab", "s3cret"):
        assert keys.verify(bad) is None
    keys.revoke("runner-0123456789ab")
    assert keys.verify(second) is None and not keys.exists("runner-0123456789ab")


def test_a_local_secret_is_made_once_and_private(tmp_path: Path) -> None:
    one = local_secret(tmp_path, "valkey-password")
    assert one == local_secret(tmp_path, "valkey-password") and len(one) >= 32
    assert stat.S_IMODE((tmp_path / "secrets").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "secrets" / "valkey-password").stat().st_mode) == 0o600


def test_printed_urls_hide_their_passwords() -> None:
    assert redacted("redis://:pw@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert redacted("postgresql+psycopg://u:p@db/x") == "postgresql+psycopg://u:***@db/x"
    assert redacted("sqlite:////var/lib/launchbay/launchbay.db").endswith("launchbay.db")
