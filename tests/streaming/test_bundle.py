"""The live page's player bundle (streaming/static/streaming/vendor/hls.js, made by
assets/build.mjs): built from the current entry, build script and lockfile, and naming the
exactly pinned hls.js it holds; its worker beside it of the same version."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "streaming/static/streaming/vendor/hls.js"
WORKER = REPO / "streaming/static/streaming/vendor/hls.worker.js"


def _banner(path: Path) -> str:
    match = re.match(r"/\*(.*?)\*/", path.read_text(encoding="utf-8")[:2000], re.S)
    assert match, f"{path.name} has no banner (assets/build.mjs writes one)"
    return match.group(1)


def test_the_player_bundle_was_built_from_the_current_entry_build_script_and_lockfile() -> None:
    sources = b"".join(
        (REPO / name).read_bytes()
        for name in ("assets/hls-entry.js", "assets/build.mjs", "package-lock.json")
    )
    assert f"sources-sha256: {hashlib.sha256(sources).hexdigest()}" in _banner(BUNDLE), (
        "streaming/static/streaming/vendor/hls.js is stale: run `make assets` and commit it"
    )


def test_the_player_bundle_and_its_worker_name_the_pinned_hls_js() -> None:
    pin = json.loads((REPO / "package.json").read_text())["devDependencies"]["hls.js"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", pin), f"hls.js is not pinned exactly: {pin}"
    assert f"hls.js {pin}" in _banner(BUNDLE) and f"hls.js {pin}" in _banner(WORKER)
