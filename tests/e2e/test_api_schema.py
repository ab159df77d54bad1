"""The API keeps to its own OpenAPI schema (schemathesis ``--checks all``,
no 5xx, no undocumented status code, no response that breaks the schema).

A real web server on a temporary database is driven by the schemathesis CLI with a fixed
seed and a bounded number of examples per operation; any failure fails the test and the
CLI's report is the assertion message. tests/e2e/schemathesis.toml names the data created
here and says why each of its settings is needed.

A manual run against the same setup: start a stack as ``schema_stack`` does, call
``seed()``, then run the command ``schemathesis_command()`` returns with its environment.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.processes import REPO_ROOT
from tests.e2e.conftest import Stack, platform_stack

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("api_schema")]

CONFIG = REPO_ROOT / "tests" / "e2e" / "schemathesis.toml"
SEED = 20261129
# Per operation and phase: about 80 s for the thirty operations on two idle cores, most of
# it the coverage phase's fixed cases (600 time zones among them).
MAX_EXAMPLES = 12
# A hard stop for a run that hangs. Not schemathesis' --max-time, which keeps fuzzing until
# the budget is spent.
TIMEOUT_SECONDS = 400

TYPE = {
    "key": "schema.order",
    "category": "transactional",
    "channels": ["inapp"],
    "templates": {"inapp": {"title": "Order {{ data.order_id | default('?') }}", "body": "", "url": ""}},
}


def seed(stack: Stack) -> str:
    """Create what tests/e2e/schemathesis.toml names; return an end-user token of alice."""
    api = stack.api
    assert api.post("/api/v1/notification-types/", json=TYPE).status_code == 201
    for external_id in ("schema-alice", "schema-bob"):
        response = api.put(f"/api/v1/recipients/{external_id}/", json={"name": external_id})
        assert response.status_code == 201, response.text
    subscribed = api.post("/api/v1/topics/schema.news/subscribers/", json={"recipients": ["schema-alice"]})
    assert subscribed.status_code == 200, subscribed.text
    document = {
        "key": "schema.doc",
        "kind": "text",
        "members": [{"recipient": "schema-alice", "role": "owner"}],
    }
    assert api.post("/api/v1/documents/", json=document).status_code == 201
    device = {"key": "schema-dev", "name": "Schema device", "kind": "schema"}
    assert api.post("/api/v1/iot/devices/", json=device).status_code == 201
    rule = {
        "key": "schema.rule",
        "devices": ["schema-dev"],
        "metric": "temp",
        "op": ">",
        "threshold": 80,
        "notify": {"recipients": ["schema-alice"]},
    }
    created = api.post("/api/v1/iot/rules/", json=rule)
    assert created.status_code == 201, created.text
    return stack.token("schema-alice")


def schemathesis_command(stack: Stack, token: str) -> tuple[list[str], dict[str, str]]:
    """The CLI command and its environment (credentials and the hooks' import path)."""
    env = {
        **stack.env,
        "SCHEMA_TEST_API_KEY": stack.api_key,
        "SCHEMA_TEST_INBOX_TOKEN": token,
        "PYTHONPATH": str(REPO_ROOT),
    }
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "--config-file",
        str(CONFIG),
        "--no-color",
        "run",
        f"{stack.web_url}/api/schema/",
        "--checks",
        "all",
        "--seed",
        str(SEED),
        "--max-examples",
        str(MAX_EXAMPLES),
        "--workers",
        "2",
    ]
    return command, env


@pytest.fixture(scope="module")
def schema_stack() -> Iterator[Stack]:
    # No workers: the API is under test, not the pipeline behind it. A long-poll with
    # nothing to answer holds for a second, not 25 (the schema's generated cursors are
    # mostly beyond the newest item).
    # The platform's own MQTT broker too: provisioning a device and sending it a command
    # go through it (a missing broker is a documented 503, but a 5xx fails the check).
    with platform_stack({"INBOX_POLL_SECONDS": "1"}, workers=(), with_iot=True) as running:
        yield running


def test_it_answers_only_what_its_schema_documents(schema_stack: Stack) -> None:
    command, env = schemathesis_command(schema_stack, seed(schema_stack))

    completed = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_SECONDS, check=False
    )

    # The phases' times and counts, in the captured output of a passing run too.
    print(completed.stdout[completed.stdout.find("Examples (in") :][:3000])
    report = completed.stdout[-20000:] + completed.stderr[-5000:]
    assert completed.returncode == 0, report
    assert re.search(r"\d+ generated, \d+ passed", completed.stdout), report
