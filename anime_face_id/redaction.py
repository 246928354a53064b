"""Secrets in URLs never reach a file or a log: user names and passwords, and the values of
query parameters named like keys, tokens and signatures."""

from __future__ import annotations

import re

# scheme://userinfo@ : the greedy run stops at the LAST "@" before the path, as URL
# parsers do, so a password containing an unescaped "@" is hidden whole
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/?#\s]*@")


# ?name=value or &name=value where a word of the name (split at _ . -) says it is a secret:
# access_token, api_key, apiKey, X-Amz-Signature, X-Amz-Credential, Key-Pair-Id, sig ...
_QUERY_PARAMETER = re.compile(r"([?&])([^=&#\s]+)=([^&#\s]*)")
_SECRET_WORDS = frozenset(
    [
        "token",
        "key",
        "apikey",
        "sig",
        "signature",
        "secret",
        "password",
        "passwd",
        "pwd",
        "auth",
        "authorization",
        "credential",
        "credentials",
        "session",
        "sessionid",
    ]
)


def _is_secret_parameter(name: str) -> bool:
    return any(word in _SECRET_WORDS for word in re.split(r"[_.\-]", name.lower()))


def _redact_query(match: re.Match) -> str:
    separator, name, value = match.groups()
    return f"{separator}{name}=***" if value and _is_secret_parameter(name) else match.group(0)


def redact_credentials(text: str) -> str:
    """``text`` (a URL, or a message quoting URLs) with the secrets of every URL replaced by
    ``***``: the user name and password (https://user:secret@host/x.jpg ->
    https://***@host/x.jpg) and the values of query parameters named like keys, tokens and
    signatures (?api_key=abc -> ?api_key=***). Use it on whatever goes to a file or a log;
    fetch with the real URL."""
    return _QUERY_PARAMETER.sub(_redact_query, _USERINFO.sub(r"\1***@", text))
