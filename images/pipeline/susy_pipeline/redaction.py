"""What the pipeline and the operator may print about URIs, field values and error text.

A message the pipeline prints reaches the pod log, the container's termination message, and from
there the CR's Failed condition, its printer column and a Warning Event that everyone who may read
the namespace's events sees. So nothing printed carries a credential:

- `display_uri(uri)`: a URI as its scheme and hosts only (`mongodb://db-0:27017,db-1:27017`). The
  user, password, path and query all go: a MongoDB URI's query can carry
  `tlsCertificateKeyFilePassword=...` or `authMechanismProperties=AWS_SESSION_TOKEN:...`, an
  object-storage URL's query a presigned signature. With `path=True` (a data file's location,
  which the error must name) the path stays, still without user, password, query or fragment.
- `echo(value)`: a value from the input (a CSV field, a CR field) as a bounded excerpt: cut to
  `MAX_ECHO_CHARS`, any URI in it shown by `display_uri`, any secret of this process's environment
  masked, and text with control characters (a NUL-separated `/proc/self/environ` read as CSV) not
  shown at all, only described.
- `scrub(text)`: free text (a library's exception message, a whole error line) with each URI shown
  by `display_uri` with its path (which may name the file at fault; a path carries no credential)
  and every secret of this process's environment masked, cut to `MAX_MESSAGE_CHARS`.

A leaf module (standard library only): the operator imports it too.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Any
from urllib.parse import unquote

# An echoed input value: long enough to show a bad number or a misspelt name, too short to carry a
# document. A SUSY field is at most about 25 characters.
MAX_ECHO_CHARS = 64
# One error message (a termination message, a condition): Kubernetes keeps at most 4096 bytes of a
# container's termination message (TerminationMessagePath, k8s.io/api/core/v1 types.go), and a
# condition's message is meant to be one readable line.
MAX_MESSAGE_CHARS = 1024
# A location kept with its path (a data file named in an error).
MAX_LOCATION_CHARS = 256

# scheme://authority[/path][?query][#fragment]; the scheme as RFC 3986 spells it.
_URI = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://(?P<authority>[^/?#\s\"'<>]*)"
                  r"(?P<path>[^?#\s\"'<>]*)(?:\?[^#\s\"'<>]*)?(?:#[^\s\"'<>]*)?")
# Environment variables whose values are secrets (or URIs that may carry them).
_SECRET_NAME = re.compile(r"PASS|SECRET|TOKEN|CREDENTIAL|(^|_)KEY($|_)", re.IGNORECASE)
# Names that match but hold no secret: the name of the Kubernetes Secret to check (files.SECRET_ENV),
# and the operator's settings that name Secrets (config.py), which its refusals must show
# ("spec.dataset.secretName susy-store is one of the operator's own connection Secrets").
_NOT_SECRET = frozenset({"SUSY_DATA_SECRET", "SUSY_STORE_SECRET", "SUSY_KAFKA_SECRET", "SUSY_STORE_CA_SECRET",
                         "SUSY_STORE_NAMESPACE_SECRET", "SUSY_ALLOWED_SECRETS"})
# Variables holding URIs: their password and query values are secrets, their hosts are not.
_URI_NAME = re.compile(r"_URI$|_URL$|_URL_", re.IGNORECASE)
# Shorter values would mask ordinary words and numbers; a 1-3 character secret is no secret.
_MIN_SECRET_CHARS = 4
MASK = "***"


def display_uri(uri: str, *, path: bool = False) -> str:
    """`uri` as scheme and hosts only (with `path=True`, and its path): never user, password or query.

    Text that is not a `scheme://` URI comes back cut to length, unchanged otherwise (a plain path).
    """
    match = _URI.fullmatch(str(uri).strip())
    if match is None:
        return _cut(str(uri), MAX_LOCATION_CHARS)
    hosts = match["authority"].rpartition("@")[2]  # userinfo ends at the last '@'
    shown = f"{match['scheme'].lower()}://{hosts}"
    if path:
        shown += match["path"]
    return _cut(shown, MAX_LOCATION_CHARS)


def scrub(text: str, *, limit: int = MAX_MESSAGE_CHARS) -> str:
    """Free text with every URI reduced to scheme, hosts and path, and every environment secret masked."""
    text = _URI.sub(lambda m: display_uri(m[0], path=True), str(text))
    return _cut(_mask_secrets(text), limit)


def echo(value: Any, *, limit: int = MAX_ECHO_CHARS) -> str:
    """A value from the input, for an error message, as `repr` shows it (a string quoted), bounded,
    redacted; never control text."""
    text = value if isinstance(value, str) else repr(value)
    if not text.isprintable():
        return f"<{len(text)} characters of non-printable text, not shown>"
    quoted = repr if isinstance(value, str) else str
    shown = scrub(text, limit=10 * limit)
    if len(shown) > limit:
        return quoted(shown[:limit]) + f"... ({len(text)} characters)"
    return quoted(shown)


def one_line(text: str, *, limit: int = MAX_MESSAGE_CHARS) -> str:
    """An error message as one scrubbed line (a termination message, a condition's message)."""
    return scrub(" ".join(str(text).split()), limit=limit)


class RedactingFilter(logging.Filter):
    """A logging filter that scrubs every record's message (arguments merged in) before any handler
    formats it: a library that logs a URI or an exception with one in it cannot leak it. On a
    handler it sees every record that reaches the handler; on a logger, that logger's own records
    (kopf posts its per-object WARNING records as Events from the logger "kopf.objects")."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = scrub(record.getMessage(), limit=MAX_LOG_CHARS)
        record.args = ()
        return True


# A log line (a traceback is printed whole, scrubbed, by the command line).
MAX_LOG_CHARS = 16 << 10


def _secret_values() -> list[str]:
    values: set[str] = set()
    for name, value in os.environ.items():
        if name in _NOT_SECRET:
            continue
        if _SECRET_NAME.search(name):
            secrets = [value]
        elif _URI_NAME.search(name):
            secrets = _uri_secrets(value)
        else:
            continue
        for secret in secrets:
            values.add(secret)
            # A value cut at a comma, a NUL or a newline (a CSV reader's field) still masks.
            values.update(re.split(r"[,\0\n;&]", secret))
    return sorted((v for v in values if len(v) >= _MIN_SECRET_CHARS), key=len, reverse=True)


def _uri_secrets(uri: str) -> list[str]:
    """The password and the secret query values of a URI, percent-decoded too (a MongoDB URI's
    `authMechanismProperties=AWS_SESSION_TOKEN:...` in pieces)."""
    match = _URI.match(uri.strip())
    if match is None:
        return []
    userinfo = match["authority"].rpartition("@")[0]
    found = [userinfo.partition(":")[2]] if userinfo else []
    query = match[0].partition("?")[2].partition("#")[0]
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if _SECRET_NAME.search(key) or key.lower().endswith("properties"):
            found += [value, *unquote(value).split(":")]
    return [text for raw in found for text in {raw, unquote(raw)}]


def _mask_secrets(text: str) -> str:
    for secret in _secret_values():  # longest first: a piece never shadows its whole
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(0, limit - 3)] + "..."
