"""Commit durability for re-runnable pipeline steps.

The API commits events synchronously: an accepted event must survive a PostgreSQL crash.
Fan-out pages and in-app dispatch commit with ``synchronous_commit = off``: a crash of
PostgreSQL (not of a worker) may forget the last few hundred milliseconds of those commits,
which only rolls the work back to a state the pipeline already recovers from (the outbox
cursor moves back and the page is planned again under ON CONFLICT DO NOTHING; deliveries
fall back to pending and the stale sweep dispatches them again). WAL order keeps it
consistent: a durable later commit implies every earlier one is durable too. In exchange
each page skips a WAL flush, which is a third of an in-app batch's database time.
"""

from __future__ import annotations

from django.db import connection


def relax_commit_durability() -> None:
    """Inside a transaction: let this commit return before its WAL reaches disk."""
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL synchronous_commit TO OFF")
