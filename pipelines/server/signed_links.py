"""Signed file links: ``/items/{id}/open`` and ``/items/{id}/thumbnail`` that work without a header.

An ``<img>``, ``<audio>``, ``<video>`` or a new tab cannot send ``Authorization: Bearer``, so
once the API needs keys, ``POST /links`` (any scope) turns file URLs into signed ones:
``?v=...&exp=UNIX&kid=KEY_ID&sig=MAC``, valid for ``server.link_ttl_s`` seconds. The browser
then streams them with ordinary Range requests instead of downloading a whole file first.

The MAC is HMAC-SHA256 over the key id, the path, the source version and the expiry, keyed
with the key's stored digest (``Catalog.link_secret``: never shown, the same on every server
of one catalog). A link is checked like a key: the key must still be in use (revoking it ends
its links at once), the expiry not passed, the MAC equal in constant time; it opens only the
one file it was made for and counts against its key's rate limit.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlencode

from retriever.catalog import Catalog

__all__ = ["FILE_PATH", "FILE_URL_PATTERN", "LinkError", "check_link", "is_signed", "parse_file_url",
           "sign_url"]

_ITEM_FILE = r"/items/[1-9][0-9]{0,18}/(?:open|thumbnail)"  # the file routes of an item
_ROOT_SEGMENT = r"/(?!\.{1,2}(?:/|$))[A-Za-z0-9._~\-]+"  # a segment of the app's root path, not . or ..
FILE_PATH = re.compile(f"^{_ITEM_FILE}$")
_FILE_URL = re.compile(f"^(?P<root>(?:{_ROOT_SEGMENT})*?)(?P<path>{_ITEM_FILE})$")
# what POST /links accepts, as its schema states it (the app's root path, the file, an optional version)
FILE_URL_PATTERN = f"^(?:{_ROOT_SEGMENT})*{_ITEM_FILE}(?:\\?v=[0-9a-f]{{16}})?$"
_VERSION = re.compile(r"^[0-9a-f]{16}$")
_KEY_ID = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")


class LinkError(ValueError):
    """A URL that ``POST /links`` cannot sign, or a signed link that does not hold."""


def _mac(secret: str, key_id: str, path: str, version: str, expires: int) -> str:
    message = f"{key_id}\n{path}\n{version}\n{expires}".encode()
    digest = hmac.new(secret.encode(), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def parse_file_url(url: str) -> tuple[str, str, str]:
    """``[/ROOT]/items/N/open?v=HEX`` -> (root path of the app, path, version); LinkError for anything else."""
    whole, _, query = url.partition("?")
    found = _FILE_URL.match(whole)
    if not found:
        raise LinkError(f"{url[:80]!r} is not a file of an item: expected /items/ID/open or "
                        "/items/ID/thumbnail")
    root, path = found.group("root"), found.group("path")
    if not query:
        return root, path, ""
    got = parse_qs(query, keep_blank_values=True)
    version = got.get("v", [""])
    if set(got) != {"v"} or len(version) != 1 or not _VERSION.match(version[0]):
        raise LinkError(f"{url[:80]!r}: the only query a file link takes is ?v= and 16 hex digits")
    return root, path, version[0]


def sign_url(url: str, key_id: str, secret: str, expires: int) -> str:
    """``url`` (a file URL as hits carry it, without the fragment) signed for ``key_id`` until ``expires``;
    the MAC covers the path from ``/items`` on, which is what the server sees under any root path."""
    root, path, version = parse_file_url(url)
    query = {"v": version} if version else {}
    query.update(exp=str(expires), kid=key_id, sig=_mac(secret, key_id, path, version, expires))
    return f"{root}{path}?{urlencode(query)}"


def is_signed(scope: dict[str, Any] | Any) -> bool:
    """Whether a request carries a link signature (``sig=`` in its query string)."""
    return b"sig=" in scope.get("query_string", b"")


def check_link(path: str, query_string: bytes, catalog: Catalog, max_ttl_s: int,
               now: Callable[[], float] = time.time) -> str:
    """The key id a signed request to ``path`` was made for; LinkError (with why) when it does not hold."""
    if not FILE_PATH.match(path):
        raise LinkError("a signed link opens only /items/ID/open or /items/ID/thumbnail")
    got = parse_qs(query_string.decode("latin-1"), keep_blank_values=True)
    one = {name: values[0] for name, values in got.items() if len(values) == 1}
    key_id, sig, version, exp = one.get("kid", ""), one.get("sig", ""), one.get("v", ""), one.get("exp", "")
    if not (_KEY_ID.match(key_id) and sig and exp.isdigit() and (not version or _VERSION.match(version))):
        raise LinkError("the link is incomplete: it needs exp, kid and sig as POST /links made them")
    expires, moment = int(exp), now()
    if expires < moment:
        raise LinkError("the link has expired: ask POST /links for a new one")
    if expires > moment + max_ttl_s + 60:
        raise LinkError("the link's expiry is further away than this server makes them")
    secret = catalog.link_secret(key_id)
    if secret is None or not hmac.compare_digest(_mac(secret, key_id, path, version, expires), sig):
        raise LinkError("the link is not valid: its key is unknown or revoked, or it was made for another file")
    return key_id
