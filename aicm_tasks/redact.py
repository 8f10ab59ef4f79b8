"""One way to show a URL without its password: :func:`redact_url`.

Every log line, exception message and CLI output that names the broker or the
ledger database goes through it. It works on the string, not on
:func:`urllib.parse.urlsplit`: a password with an unencoded ``/``, ``#`` or
``?`` ends ``urlsplit``'s netloc early, so the parsed ``password`` is only the
part before that character, the rest lands in the path, and ``.port`` raises
a ``ValueError`` that quotes a piece of the password. Here nothing is parsed
that could fail; when in doubt, more is hidden rather than less.
"""

from __future__ import annotations

import re

#: What a hidden secret is shown as.
MASK = "***"

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
#: A user name shown before ``:***``; anything else in the user info is hidden too.
_PLAIN_USER = re.compile(r"[A-Za-z0-9._\-]+")
#: A query parameter (or libpq keyword) whose name says it is a password:
#: ``password=``, ``sslpassword=``, ``passwd=``, ``pass=``. The value runs to the
#: next ``&name=`` (not the next ``&``: an unencoded ``&`` in the password would
#: otherwise show the rest of it).
_QUERY_SECRET = re.compile(
    r"(?is)([?&;]|^)([A-Za-z_]*pass(?:word|wd)?)=.*?(?=&[A-Za-z_][A-Za-z0-9_]*=|\Z)"
)
#: ``password=...`` in a libpq keyword/value string (``host=db password='x y'``).
_CONNINFO_SECRET = re.compile(r"(?i)\b(password|sslpassword)\s*=\s*('(?:[^'\\]|\\.)*'?|\S+)")
#: An authority that is empty (``unix:///path``), a host, ``host:port`` or
#: ``[ipv6]:port``; anything else (``:secret``, ``user:secret`` without an ``@``,
#: even ``:1234``) is hidden.
_HOST = re.compile(r"(?:(?:[A-Za-z0-9._\-%]+|\[[0-9A-Za-z:.%]*\])(?::\d*)?)?")


def redact_url(url: str) -> str:
    """``url`` with every password replaced by ``***``, for messages and logs.

    Handles ``user:password@``, ``:password@`` and ``name@`` user info (a name
    without a colon may be a password written without one, so it is hidden
    too), passwords holding unencoded ``/ # ? @ :``, ``password=`` query
    parameters (``unix:///run/redis.sock?password=...``), libpq keyword strings,
    IPv6 hosts and any scheme. A string that is not a URL at all comes back
    unchanged unless it holds an ``@`` (then everything before the last one is
    hidden) or a ``password=``.
    """
    match = _SCHEME.match(url)
    if match is None:
        url = _CONNINFO_SECRET.sub(lambda m: f"{m.group(1)}={MASK}", url)
        return MASK + url[url.rfind("@") :] if "@" in url else url
    scheme, rest = match.group(1), url[match.end() :]
    # The user info ends at the *last* @: a password may hold unencoded @, / or ?,
    # and a query's @ (rare) only makes this hide more than needed.
    at = rest.rfind("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        user, colon, _ = userinfo.partition(":")
        if colon and (user == "" or _PLAIN_USER.fullmatch(user)):
            shown = f"{user}:{MASK}@"
        else:
            shown = f"{MASK}@"
    else:
        shown = ""
    end = len(rest)
    for stop in "/?#":
        found = rest.find(stop)
        if found >= 0:
            end = min(end, found)
    authority, tail = rest[:end], rest[end:]
    if not _HOST.fullmatch(authority):
        # Not a host: the URL is garbage, and what follows may be password too.
        return f"{scheme}://{shown}{MASK}"
    tail = _QUERY_SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}={MASK}", tail)
    return f"{scheme}://{shown}{authority}{tail}"
