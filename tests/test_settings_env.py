from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from project.settings.env import env_bool, env_database, env_int, env_list


def test_it_reads_defaults_when_unset(monkeypatch):
    monkeypatch.delenv("SOME_NUMBER", raising=False)
    assert env_int("SOME_NUMBER", 5) == 5


def test_it_names_the_variable_with_a_malformed_value(monkeypatch):
    monkeypatch.setenv("SOME_NUMBER", "five")
    with pytest.raises(ImproperlyConfigured, match="SOME_NUMBER"):
        env_int("SOME_NUMBER", 5)
    monkeypatch.setenv("SOME_FLAG", "maybe")
    with pytest.raises(ImproperlyConfigured, match="SOME_FLAG"):
        env_bool("SOME_FLAG", False)
    monkeypatch.setenv("SOME_DB", "mysql://x/y")
    with pytest.raises(ImproperlyConfigured, match="SOME_DB"):
        env_database("SOME_DB", "postgres://a/b")


def test_it_parses_database_urls_and_lists(monkeypatch):
    monkeypatch.setenv("SOME_DB", "postgres://u:p%40ss@db.local:6543/app")
    parsed = env_database("SOME_DB", "postgres://a/b")
    assert (parsed["USER"], parsed["PASSWORD"], parsed["HOST"], parsed["PORT"], parsed["NAME"]) == (
        "u",
        "p@ss",
        "db.local",
        "6543",
        "app",
    )
    monkeypatch.setenv("SOME_LIST", "a, b,,c")
    assert env_list("SOME_LIST", []) == ["a", "b", "c"]
