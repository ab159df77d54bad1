"""The platform's benchmarks, run by ``make bench`` (``python -m bench``).

Each benchmark builds its own stack (a private Redis, a temporary PostgreSQL database
cloned from a migrated template, and real server and worker processes), so it never
touches the development database or the machine's shared Redis. ``tests/bench`` runs a
small version of each so that they keep working.
"""
