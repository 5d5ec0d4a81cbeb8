"""``fakesake api`` (serve the HTTP API) and ``fakesake api-keys create|list|revoke``.

Mounted by the root CLI through :func:`add_subcommands`. Imports stay light: FastAPI and uvicorn are imported
when ``fakesake api`` runs, so ``api-keys`` works without the ``api`` extra.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from api.settings import ApiSettings
from producers.errors import FakesakeError

EXIT_OK, EXIT_USAGE = 0, 2


def _settings(args: argparse.Namespace) -> ApiSettings:
    settings = ApiSettings()
    update: dict[str, Any] = {}
    if getattr(args, "redis_url", None):
        update["redis"] = settings.redis.model_copy(update={"url": args.redis_url})
    group: dict[str, Any] = {k: v for k in ("host", "port") if (v := getattr(args, k, None)) is not None}
    if group:
        update["api"] = settings.api.model_copy(update=group)
    return settings.model_copy(update=update)


def add_subcommands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("api", help="serve the HTTP API (needs the api extra)")
    p.add_argument("--host", help="listen address; env FAKESAKE_API__HOST")
    p.add_argument("--port", type=int, help="listen port; env FAKESAKE_API__PORT")
    p.add_argument("--redis-url", help="env FAKESAKE_REDIS__URL")
    p.set_defaults(run=_run_api)

    k = sub.add_parser("api-keys", help="create, list or revoke the API keys of a tenant")
    k.add_argument("--redis-url", help="env FAKESAKE_REDIS__URL")
    ks = k.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = ks.add_parser("create", help="create a key; it is printed once and cannot be shown again")
    c.add_argument("--tenant", required=True)
    c.set_defaults(run=_run_create)
    ls = ks.add_parser("list", help="key ids, tenants, creation and revocation times (never the keys)")
    ls.add_argument("--tenant", help="only this tenant's keys")
    ls.set_defaults(run=_run_list)
    r = ks.add_parser("revoke", help="revoke a key by its id: refused by the next request")
    r.add_argument("key_id")
    r.add_argument("--tenant", required=True)
    r.set_defaults(run=_run_revoke)


def _run_api(args: argparse.Namespace) -> int:
    from api.server import serve

    return serve(_settings(args))


def _store(args: argparse.Namespace) -> Any:
    from api.keystore import KeyStore
    from producers.connections import redis_from_settings

    return KeyStore(redis_from_settings(_settings(args).redis))


def _fail(exc: FakesakeError) -> int:
    print(f"fakesake: {exc.code.value}: {exc.message}", file=sys.stderr)
    return EXIT_USAGE


def _run_create(args: argparse.Namespace) -> int:
    try:
        key, record = _store(args).create(args.tenant)
    except FakesakeError as exc:
        return _fail(exc)
    print(json.dumps({"key": key, **record.model_dump(mode="json")}))
    print("store the key now: it cannot be shown again", file=sys.stderr)
    return EXIT_OK


def _run_list(args: argparse.Namespace) -> int:
    try:
        records = _store(args).list(args.tenant)
    except FakesakeError as exc:
        return _fail(exc)
    for record in records:
        print(record.model_dump_json())
    return EXIT_OK


def _run_revoke(args: argparse.Namespace) -> int:
    try:
        record = _store(args).revoke(args.key_id, args.tenant)
    except FakesakeError as exc:
        return _fail(exc)
    print(record.model_dump_json())
    return EXIT_OK
