"""``mmrag keys create|list|revoke``: the API keys of ``mmrag serve``, kept in the store's catalog."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from pipelines.cli import exit_codes
from retriever.catalog import ApiKeyRecord
from retriever.store import Store

__all__ = ["cmd_keys", "format_keys", "store_has_keys"]

Emit = Callable[[argparse.Namespace, Any, str], None]


def _store(args: argparse.Namespace, overrides: dict[str, Any]) -> Store:
    from retriever.config import Config

    config = Config.load(args.store, overrides)
    return Store(config.store, config, create=False)


def store_has_keys(args: argparse.Namespace, overrides: dict[str, Any]) -> bool:
    """Whether the store at ``--store`` has an API key in use (False when there is no store yet)."""
    from retriever.errors import StoreError

    try:
        store = _store(args, overrides)
    except StoreError:
        return False
    try:
        return store.catalog.has_active_api_keys()
    finally:
        store.close()


def format_keys(keys: list[ApiKeyRecord]) -> str:
    if not keys:
        return "no API keys (create one with `mmrag keys create --name NAME --scope read|ingest|admin`)"
    def when(t: Any) -> str:
        return t.strftime("%Y-%m-%d %H:%M") if t else "-"

    lines = [f"{'NAME':<20} {'SCOPE':<7} {'ID':<15} {'CREATED':<17} {'LAST USED':<17} REVOKED"]
    lines += [f"{k.name:<20} {k.scope:<7} {k.id:<15} {when(k.created_at):<17} {when(k.last_used_at):<17} "
              f"{when(k.revoked_at) if k.revoked else 'no'}" for k in keys]
    return "\n".join(lines)


def cmd_keys(args: argparse.Namespace, overrides: dict[str, Any], emit: Emit) -> int:
    store = _store(args, overrides)
    try:
        catalog = store.catalog
        if args.keys_action == "create":
            new = catalog.create_api_key(args.name, args.scope)
            print(f"mmrag: created key {new.record.name!r} ({new.record.scope}, id {new.record.id}); it is shown "
                  "only now: store it, the catalog keeps only its hash", file=sys.stderr)
            emit(args, {**new.record.to_dict(), "key": new.key}, new.key)
        elif args.keys_action == "list":
            keys = catalog.api_keys()
            emit(args, [k.to_dict() for k in keys], format_keys(keys))
        else:
            record = catalog.revoke_api_key(args.key)
            emit(args, record.to_dict(), f"revoked key {record.name!r} (id {record.id})")
    finally:
        store.close()
    return exit_codes.OK
