"""``FAKESAKE_REDIS__URL`` parsed once: one Redis server, or a Sentinel group that names the current primary.

A Sentinel URL follows kombu's form (Celery's broker docs): one ``sentinel://`` part per Sentinel, joined by
``;``. ``sentinels://`` is the same with TLS to the Sentinels and to the primary. Credentials and the database
in the URL are those of the Redis data nodes (as kombu reads them); the Sentinels' own password is a separate
setting (``FAKESAKE_REDIS__SENTINEL_PASSWORD``) and the group's name is ``FAKESAKE_REDIS__MASTER_NAME``::

    sentinel://:secret@10.0.0.1:26379/0;sentinel://10.0.0.2:26379;sentinel://10.0.0.3:26379

Every part may repeat the credentials and database, but parts that disagree are refused: which one a client
would use would depend on the client. Standard library only: the settings validate URLs with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

SENTINEL_SCHEMES = ("sentinel", "sentinels")
SENTINEL_DEFAULT_PORT = 26379


@dataclass(frozen=True)
class SentinelTarget:
    """A Sentinel group: where its Sentinels listen and how to talk to the primary they name."""

    sentinels: tuple[tuple[str, int], ...]
    tls: bool
    username: str | None
    password: str | None
    db: int

    def kombu_url(self) -> str:
        """The URL for Celery/kombu's Sentinel transport: plain ``sentinel://`` parts (kombu reads only that
        scheme; TLS travels in ``broker_use_ssl``), each with the credentials and database, so any part read
        alone (kombu's failover to another part re-reads that part's URL) has them."""
        auth = ""
        if self.username is not None or self.password is not None:
            user = quote(self.username or "", safe="")
            auth = f"{user}:{quote(self.password or '', safe='')}@"
        return ";".join(f"sentinel://{auth}{_netloc(host, port)}/{self.db}" for host, port in self.sentinels)


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_sentinel_url(url: str) -> bool:
    """Whether ``url`` names a Sentinel group rather than one server."""
    return url.strip().partition("://")[0].lower() in SENTINEL_SCHEMES


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Parse ``sentinel://host:port[/db][;sentinel://host:port...]``; ValueError says what is wrong."""
    parts = [p.strip() for p in url.split(";") if p.strip()]
    if not parts:
        raise ValueError("empty Redis URL")
    schemes: set[str] = set()
    hosts: list[tuple[str, int]] = []
    creds: set[tuple[str | None, str | None]] = set()
    dbs: set[int] = set()
    for part in parts:
        split = urlsplit(part)
        scheme = split.scheme.lower()
        if scheme not in SENTINEL_SCHEMES:
            raise ValueError(f"every part of a Sentinel URL must be sentinel:// or sentinels://, not {scheme}://")
        schemes.add(scheme)
        try:
            port = split.port or SENTINEL_DEFAULT_PORT
        except ValueError as exc:  # a port that is not a number, or out of range
            raise ValueError(f"bad Sentinel port in {split.netloc.rpartition('@')[2]!r}: {exc}") from None
        if not split.hostname:
            raise ValueError("a sentinel:// part has no host")
        hosts.append((split.hostname, port))
        if split.username is not None or split.password is not None:
            creds.add((_unquoted(split.username), _unquoted(split.password)))
        path = split.path.strip("/")
        if path:
            if not path.isdigit():
                raise ValueError(f"the database in a Sentinel URL is a number, not {path!r}")
            dbs.add(int(path))
    if len(schemes) > 1:
        raise ValueError("mixed sentinel:// and sentinels:// parts: TLS is on for all Sentinels or for none")
    if len(creds) > 1:
        raise ValueError("the parts of the Sentinel URL name different credentials")
    if len(dbs) > 1:
        raise ValueError("the parts of the Sentinel URL name different databases")
    username, password = creds.pop() if creds else (None, None)
    return SentinelTarget(
        sentinels=tuple(dict.fromkeys(hosts)),
        tls=schemes == {"sentinels"},
        username=username or None,
        password=password,
        db=dbs.pop() if dbs else 0,
    )


def _unquoted(value: str | None) -> str | None:
    return None if value is None else unquote(value)
