"""Django's PostgreSQL backend, reading ``timestamptz`` values with psycopg's C loader.

Django registers a pure-Python loader for ``timestamptz`` on every connection (to give
each value the connection's time zone object), which bypasses the compiled loaders of
``psycopg[binary]``: a timestamp then costs several microseconds to parse, the largest
single cost of loading rows in the fan-out (docs/benchmarks.md, "Where the time goes").
This backend registers a loader with the same contract (a ``timezone`` attribute that
Django's cursors check, values returned in that time zone) that parses with the compiled
loader. Without the compiled module (plain ``psycopg``), Django's loader stays.
"""

from __future__ import annotations

import datetime
from functools import lru_cache
from typing import Any

from django.db.backends.postgresql import base
from psycopg import _cmodule
from psycopg.adapt import Loader


@lru_cache
def _compiled_tz_loader(tz: datetime.tzinfo | None) -> type[Loader] | None:
    compiled: Any = getattr(_cmodule._psycopg, "TimestamptzLoader", None) if _cmodule._psycopg else None
    if compiled is None:
        return None

    class CompiledTzLoader(Loader):
        # Django's cursors compare this with the connection's time zone (base.py's
        # create_cursor) and register their own loader when they differ.
        timezone = tz

        def __init__(self, oid: int, context: Any = None):
            super().__init__(oid, context)
            self._parse = compiled(oid, context).load

        def load(self, data: Any) -> datetime.datetime:
            return self._parse(data).replace(tzinfo=self.timezone)

    return CompiledTzLoader


class DatabaseWrapper(base.DatabaseWrapper):
    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        connection = super().get_new_connection(conn_params)
        loader = _compiled_tz_loader(self.timezone)
        if loader is not None:
            connection.adapters.register_loader("timestamptz", loader)
        return connection
