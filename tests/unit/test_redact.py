"""redact_url never shows a password, whatever the URL looks like."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from aicm_tasks.redact import MASK, redact_url

#: Every place a password can sit in the URLs aicm-tasks is given.
FORMS: dict[str, Callable[[str], str]] = {
    "user and password": lambda p: f"redis://aicm:{p}@redis.internal:6379/0",
    "password only": lambda p: f"redis://:{p}@127.0.0.1:6379/2",
    "tls, ipv6 host": lambda p: f"rediss://:{p}@[2001:db8::1]:6380/0?ssl_cert_reqs=required",
    "percent-encoded": lambda p: f"redis://aicm:{quote(p, safe='')}@redis.internal/0",
    "unix socket, password last": lambda p: f"unix:///run/redis/redis.sock?db=0&password={p}",
    "unix socket, password first": lambda p: f"unix:///run/redis.sock?password={p}&db=3",
    "unix socket, user info": lambda p: f"unix://:{p}@/run/redis.sock?db=0",
    "postgresql": lambda p: f"postgresql://aicm:{p}@db.internal:5432/ledger?sslmode=require",
    "no host after the password": lambda p: f"redis://:{p}",
    "no scheme": lambda p: f"aicm:{p}@redis.internal:6379",
    "libpq keywords": lambda p: f"host=db.internal dbname=ledger password={p}",
}


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://aicm:s3cret@redis.internal:6379/0", "redis://aicm:***@redis.internal:6379/0"),
        ("redis://:s3cret@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("redis://:pa/ss#wo?rd@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://:p@s:s@host/0", "redis://:***@host/0"),
        ("redis://:p%2Fss@[::1]:6379/0", "redis://:***@[::1]:6379/0"),
        (
            "rediss://:tls@host:6380/0?ssl_cert_reqs=none",
            "rediss://:***@host:6380/0?ssl_cert_reqs=none",
        ),
        ("unix:///tmp/r.sock?db=1&password=s3cret", "unix:///tmp/r.sock?db=1&password=***"),
        ("unix:///tmp/r.sock?password=a&b#c&db=1", "unix:///tmp/r.sock?password=***&db=1"),
        # a name without a colon may be a password written without one
        ("redis://s3cret@host/0", "redis://***@host/0"),
        ("redis://:s3cret", "redis://***"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("aicm-local.sqlite3", "aicm-local.sqlite3"),
        ("host=db password='a b' dbname=x", "host=db password=*** dbname=x"),
    ],
)
def test_redact_url_shows_everything_but_the_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@given(
    form=st.sampled_from(sorted(FORMS)),
    password=st.text(
        st.characters(blacklist_categories=["Cs"]) | st.sampled_from("/#?@:&%= '\n"),
        min_size=4,
        max_size=40,
    ),
)
@example(form="user and password", password="pa/ss")
@example(form="password only", password="x#y?z@w:v")
@example(form="unix socket, password first", password="a&b=c")
def test_no_password_survives_redaction(form: str, password: str) -> None:
    url_with = FORMS[form]
    redacted = redact_url(url_with(password))
    # A password that is also part of the rest of the URL ("6379", "redis") or of
    # what redaction writes (":***@") cannot be told apart; any other must be gone.
    assume(password not in url_with("") and password not in redact_url(url_with("x")))
    assume(MASK not in password)
    # With no host, "redis://:" + "@000" *is* an empty password and host "000".
    assume(not (form == "no host after the password" and "@" in password))
    assert password not in redacted
    assert quote(password, safe="") not in redacted
