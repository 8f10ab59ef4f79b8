"""The signing key pair: made once, mode 0600, reused; payloads the SDK decodes."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import jwt
import pytest
from aicostmanager.config_manager import ConfigManager
from aicostmanager.triggered_limits_cache import triggered_limits_cache

from aicm_tasks.errors import ConfigurationError
from aicm_tasks.server.signing import PRIVATE_KEY_FILE, LimitSigner, default_keys_dir

EVENT = {
    "event_id": "e1",
    "limit_id": "l1",
    "threshold_type": "limit",
    "amount": 1.0,
    "period": "day",
    "limit_context": "account",
    "limit_message": "account reached its limit",
    "service_key": "openai::gpt-4o-mini",
    "customer_key": None,
    "api_key_id": "kid",
    "triggered_at": "2026-01-01T00:00:00+00:00",
    "expires_at": "2026-01-02T00:00:00+00:00",
}


def test_the_key_is_created_once_with_mode_0600_and_reused(tmp_path: Path) -> None:
    first = LimitSigner(tmp_path / "keys")
    key_file = tmp_path / "keys" / PRIVATE_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    again = LimitSigner(tmp_path / "keys")
    assert again.public_key_pem == first.public_key_pem and again.key_id == first.key_id
    # A payload signed before a restart still verifies after it.
    token = first.payload([EVENT])["encrypted_payload"]
    assert again.decode(token)["triggered_limits"] == [EVENT]
    assert [p.name for p in (tmp_path / "keys").iterdir()] == [PRIVATE_KEY_FILE]


def test_servers_starting_together_share_one_key(tmp_path: Path) -> None:
    signers: list[LimitSigner] = []
    threads = [
        threading.Thread(target=lambda: signers.append(LimitSigner(tmp_path))) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(signers) == 4
    assert len({signer.public_key_pem for signer in signers}) == 1


def test_the_sdks_config_manager_decodes_the_payload(tmp_path: Path) -> None:
    payload = LimitSigner().payload([EVENT])
    assert set(payload) == {"version", "public_key", "key_id", "encrypted_payload"}
    triggered_limits_cache.clear()
    manager = ConfigManager(ini_path=str(tmp_path / "AICM.INI"), load=False)
    manager.write_triggered_limits(dict(payload))
    (limit,) = manager.get_triggered_limits(service_key="openai::gpt-4o-mini")
    triggered_limits_cache.clear()
    assert (limit.limit_id, limit.api_key_id, limit.amount) == ("l1", "kid", 1.0)


def test_another_key_or_issuer_is_refused() -> None:
    signer, stranger = LimitSigner(), LimitSigner()
    token = stranger.payload([EVENT])["encrypted_payload"]
    with pytest.raises(jwt.InvalidSignatureError):
        signer.decode(token)
    with pytest.raises(jwt.InvalidIssuerError):
        jwt.decode(token, stranger.public_key_pem, algorithms=["RS256"], issuer="someone-else")


def test_the_payload_is_cached_per_set_of_events() -> None:
    signer = LimitSigner()
    assert signer.payload([EVENT]) is signer.payload([dict(EVENT)])
    assert signer.payload([{**EVENT, "amount": 2.0}]) is not signer.payload([EVENT])


@pytest.mark.parametrize(
    ("db", "expected"),
    [
        (":memory:", None),
        ("postgresql://u@h/db", "data-dir"),
        ("LEDGER", "beside"),
        ("sqlite:///LEDGER", "beside"),
    ],
)
def test_keys_live_beside_an_sqlite_file_else_in_the_data_dir(
    db: str, expected: str | None, tmp_path: Path
) -> None:
    found = default_keys_dir(db.replace("LEDGER", str(tmp_path / "ledger.sqlite3")))
    if expected is None:
        assert found is None
    elif expected == "beside":
        assert found == tmp_path.resolve()
    else:
        assert found is not None and found.name == "aicm-tasks"


def test_sets_signed_one_after_another_within_a_second_are_ordered_by_iat() -> None:
    """Workers keep the set with the latest ``iat``; in whole seconds, two limits
    tripping within one second gave two sets with one ``iat``, and a worker whose
    answer came second could write the earlier set over the later."""
    signer = LimitSigner()
    issued = []
    for amount in range(5):
        token = signer.payload([{**EVENT, "amount": float(amount)}])["encrypted_payload"]
        issued.append(signer.decode(token)["iat"])
    assert issued == sorted(issued) and len(set(issued)) == len(issued)


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o606, 0o660])
def test_a_private_key_other_users_can_read_or_write_is_refused_at_start(
    tmp_path: Path, mode: int
) -> None:
    """The key signs the limits workers enforce, and it sits beside the SQLite
    file, a directory others may write to (``/tmp``): a key file another user
    can read lets them sign limits a pinned worker trusts; one they can write
    (or planted there by them), the same. As ssh does, such a key is refused."""
    LimitSigner(tmp_path)
    key_file = tmp_path / PRIVATE_KEY_FILE
    key_file.chmod(mode)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        LimitSigner(tmp_path)
    key_file.chmod(0o600)
    assert LimitSigner(tmp_path).public_key_pem
