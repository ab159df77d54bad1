"""Live streaming end to end: ffmpeg publishes a test pattern over RTMP to the platform's
nginx-rtmp (``manage.py stream_ingest``); with a valid key the stream goes live and its HLS
ladder (source, 480p, 360p) is served and decodes (ffprobe); an unknown key is refused; a
transcoder that dies comes back; a publisher back within the grace period continues the
same stream, and followers hear "went live" exactly once; stopping makes it offline (its
segments gone, or kept as a recording when the stream asks for one); a stream cut off from
the admin is dropped at once and its old key refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from project.processes.waiting import wait_until
from tests.e2e.conftest import Stack, platform_stack

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("streaming")]

GRACE = 4.0


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with platform_stack({"STREAMING_GRACE_SECONDS": str(GRACE)}, with_streaming=True) as running:
        yield running


class Publisher:
    """ffmpeg sending a 720p30 test pattern with a sine tone, in real time, over RTMP."""

    def __init__(self, stack: Stack, stream_key: str, *, seconds: float = 120) -> None:
        url = f"rtmp://127.0.0.1:{stack.env['STREAMING_RTMP_PORT']}/live/{stream_key}"
        self.process = subprocess.Popen(
            [
                "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re",
                "-f", "lavfi", "-i", f"testsrc=size=1280x720:rate=30:duration={seconds}",
                "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}",
                "-c:v", "libx264", "-preset", "ultrafast", "-g", "30", "-pix_fmt", "yuv420p",
                "-c:a", "aac", "-b:a", "96k", "-f", "flv", url,
            ],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def create_stream(stack: Stack, key: str) -> dict[str, Any]:
    owner, _ = stack.create_recipient("creator")
    response = stack.api.post(
        "/api/v1/streams/", json={"key": key, "title": f"Test pattern {key}", "owner": owner}
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def status_of(stack: Stack, key: str) -> str:
    response = stack.api.get(f"/api/v1/streams/{key}/")
    assert response.status_code == 200, response.text
    return str(response.json()["status"])


def hls(stack: Stack, path: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{stack.env['STREAMING_HTTP_PORT']}/hls/{path}", timeout=10)


def variants(master: str) -> dict[str, str]:
    """rendition playlist path -> its RESOLUTION attribute."""
    lines = master.splitlines()
    found = {}
    for number, line in enumerate(lines):
        if line.startswith("#EXT-X-STREAM-INF:"):
            resolution = next(
                (
                    part.split("=", 1)[1]
                    for part in line.split(":", 1)[1].split(",")
                    if part.startswith("RESOLUTION=")
                ),
                "",
            )
            found[lines[number + 1].strip()] = resolution
    return found


def probe(data: bytes) -> dict[str, Any]:
    """ffprobe decodes the segment: its streams, with the video frames counted."""
    with tempfile.NamedTemporaryFile(suffix=".ts") as segment:
        segment.write(data)
        segment.flush()
        completed = subprocess.run(
            ["ffprobe", "-v", "error", "-count_frames", "-show_entries",
             "stream=codec_type,codec_name,width,height,nb_read_frames", "-of", "json", segment.name],
            capture_output=True, timeout=30, check=True,
        )  # fmt: skip
    return dict(json.loads(completed.stdout))


def transcoders(secret: str) -> list[int]:
    """The pids of ffmpeg processes reading this stream back from nginx."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # the transcoder reads (-i) the stream; the publisher writes to it
        if argv and argv[0].endswith(b"ffmpeg") and b"-i" in argv[:-1]:
            if argv[argv.index(b"-i") + 1].endswith(f"/live/{secret}".encode()):
                pids.append(int(entry.name))
    return pids


def went_live_items(stack: Stack, token: str) -> list[dict[str, Any]]:
    response = stack.end_user(token).get("/api/v1/inbox/")
    assert response.status_code == 200, response.text
    return [item for item in response.json()["results"] if item["title"].endswith(" is live")]


def test_a_valid_key_goes_live_with_a_ladder_that_decodes_and_followers_hear_once(stack: Stack) -> None:
    created = create_stream(stack, "pattern-one")
    assert created["ingest_url"].endswith(f":{stack.env['STREAMING_RTMP_PORT']}/live")
    assert created["status"] == "offline"
    fan, fan_token = stack.create_recipient("fan")
    followed = stack.end_user(fan_token).post("/api/v1/streams/pattern-one/follow/")
    assert followed.status_code == 200, followed.text

    publisher = Publisher(stack, created["stream_key"])
    try:
        started = time.monotonic()
        wait_until(
            lambda: status_of(stack, "pattern-one") == "live", 30, message="the stream never went live"
        )
        went_live = time.monotonic() - started
        assert went_live < 15, f"live only {went_live:.1f}s after the publish began"

        master = hls(stack, "pattern-one/master.m3u8")
        assert master.status_code == 200 and master.headers["content-type"] == "application/vnd.apple.mpegurl"
        assert master.headers["cache-control"] == "no-cache"
        ladder = variants(master.text)
        assert ladder == {
            "source/index.m3u8": "1280x720",
            "480p/index.m3u8": "854x480",
            "360p/index.m3u8": "640x360",
        }
        for playlist, resolution in ladder.items():
            listing = hls(stack, f"pattern-one/{playlist}")
            assert listing.status_code == 200
            segments = [line for line in listing.text.splitlines() if line.endswith(".ts")]
            assert segments, f"{playlist} lists no segment"
            rendition = playlist.split("/")[0]
            segment = hls(stack, f"pattern-one/{rendition}/{segments[-1]}")
            assert segment.status_code == 200 and segment.headers["cache-control"].startswith(
                "public, max-age="
            )
            streams = {s["codec_type"]: s for s in probe(segment.content)["streams"]}
            width, height = (int(n) for n in resolution.split("x"))
            assert (streams["video"]["width"], streams["video"]["height"]) == (width, height)
            assert int(streams["video"]["nb_read_frames"]) > 0
            assert streams["audio"]["codec_name"] == "aac"

        # A transcoder that dies is started again while the publisher is on.
        secret = created["stream_key"]
        (first,) = wait_until(lambda: transcoders(secret) or None, 10, message="no transcoder found")
        sequence_before = _media_sequence(hls(stack, "pattern-one/480p/index.m3u8").text)
        os.kill(first, signal.SIGKILL)
        wait_until(
            lambda: [pid for pid in transcoders(secret) if pid != first] or None,
            15,
            message="the transcoder was not started again",
        )
        wait_until(
            lambda: _media_sequence(hls(stack, "pattern-one/480p/index.m3u8").text) > sequence_before + 1,
            20,
            message="no new segments after the transcoder came back",
        )

        # The publisher drops and comes back within the grace period: the same stream.
        publisher.stop()
        # the ingest saw it go (nginx's on_publish_done stops the transcoder)
        wait_until(lambda: not transcoders(secret), 15, message="the transcoder outlived its publisher")
        publisher = Publisher(stack, secret)
        wait_until(lambda: publishes(stack, "pattern-one") == 2, 15, message="the publisher was not let back")
        wait_until(lambda: transcoders(secret) or None, 15, message="no transcoder for the publisher back")
        assert status_of(stack, "pattern-one") == "live"
    finally:
        publisher.stop()

    wait_until(
        lambda: status_of(stack, "pattern-one") == "offline",
        GRACE + 15,
        message="the stream never went offline",
    )
    assert hls(stack, "pattern-one/master.m3u8").status_code == 404  # its segments were cleaned up
    items = wait_until(
        lambda: went_live_items(stack, fan_token) or None, 20, message="the follower was not told"
    )
    assert len(items) == 1 and "Test pattern pattern-one" in items[0]["body"]
    with stack.db() as db:
        sessions = db.execute(
            "SELECT publishes, ended_at IS NOT NULL, notified_at IS NOT NULL FROM streaming_livesession l "
            "JOIN streaming_stream s ON s.id = l.stream_id WHERE s.key = 'pattern-one'"
        ).fetchall()
    assert sessions == [(2, True, True)]


def test_a_publish_with_an_unknown_key_is_refused(stack: Stack) -> None:
    create_stream(stack, "pattern-two")
    publisher = Publisher(stack, "sk_not-a-key-of-any-stream", seconds=30)
    try:
        publisher.process.wait(20)
    except subprocess.TimeoutExpired:
        publisher.stop()
        pytest.fail("nginx let a publisher with an unknown key go on")
    assert publisher.process.returncode != 0
    assert status_of(stack, "pattern-two") == "offline"
    assert hls(stack, "pattern-two/master.m3u8").status_code == 404


def publishes(stack: Stack, key: str) -> int:
    """Publisher connections in the stream's open live session (0: none open)."""
    with stack.db() as db:
        row = db.execute(
            "SELECT l.publishes FROM streaming_livesession l JOIN streaming_stream s ON s.id = l.stream_id "
            "WHERE s.key = %s AND l.ended_at IS NULL",
            (key,),
        ).fetchone()
    return int(row[0]) if row else 0


def _media_sequence(playlist: str) -> int:
    for line in playlist.splitlines():
        if line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            return int(line.split(":", 1)[1])
    return -1


def test_a_stream_cut_off_from_the_admin_drops_its_publisher_and_goes_offline_at_once(stack: Stack) -> None:
    created = create_stream(stack, "pattern-three")
    publisher = Publisher(stack, created["stream_key"])
    try:
        wait_until(
            lambda: status_of(stack, "pattern-three") == "live", 30, message="the stream never went live"
        )
        # what the admin's "Cut off" action calls
        stack.manage(
            "shell", "-c",
            "from streaming.models import Stream; from streaming.services.streams import stream_cut_off; "
            "stream_cut_off(Stream.objects.get(key='pattern-three'))",
        )  # fmt: skip
        wait_until(lambda: publisher.process.poll() is not None, 15, message="the publisher was not dropped")
        wait_until(lambda: status_of(stack, "pattern-three") == "offline", 15, message="still live")
        with stack.db() as db:
            reasons = db.execute(
                "SELECT l.end_reason FROM streaming_livesession l JOIN streaming_stream s ON s.id = l.stream_id "
                "WHERE s.key = 'pattern-three'"
            ).fetchall()
        assert reasons == [("cut off",)]  # not "the publisher stopped" after a grace period
    finally:
        publisher.stop()
    again = Publisher(stack, created["stream_key"], seconds=30)  # the old key publishes no more
    try:
        again.process.wait(20)
    except subprocess.TimeoutExpired:
        again.stop()
        pytest.fail("the rotated-out key was let publish again")
    assert status_of(stack, "pattern-three") == "offline"


def test_a_stream_that_asks_for_a_recording_keeps_its_segments_when_it_ends(stack: Stack) -> None:
    owner, _ = stack.create_recipient("creator")
    response = stack.api.post(
        "/api/v1/streams/", json={"key": "pattern-four", "title": "Kept", "owner": owner, "record": True}
    )
    assert response.status_code == 201, response.text
    publisher = Publisher(stack, response.json()["stream_key"])
    try:
        wait_until(
            lambda: status_of(stack, "pattern-four") == "live", 30, message="the stream never went live"
        )
        wait_until(
            lambda: hls(stack, "pattern-four/360p/index.m3u8").text.count("#EXTINF") >= 3,
            20,
            message="fewer than three segments",
        )
    finally:
        publisher.stop()
    wait_until(lambda: status_of(stack, "pattern-four") == "offline", GRACE + 15, message="never offline")
    with stack.db() as db:
        row = db.execute(
            "SELECT l.recording FROM streaming_livesession l JOIN streaming_stream s ON s.id = l.stream_id "
            "WHERE s.key = 'pattern-four'"
        ).fetchone()
    assert row is not None
    (recording,) = row
    kept = Path(stack.env["STREAMING_DIR"]) / recording
    assert recording.startswith("recordings/pattern-four/") and (kept / "master.m3u8").exists()
    playlist = (kept / "360p" / "index.m3u8").read_text()
    assert "#EXT-X-PLAYLIST-TYPE:EVENT" in playlist and "#EXT-X-ENDLIST" in playlist
    segments = [line for line in playlist.splitlines() if line.endswith(".ts")]
    assert len(segments) >= 3 and all((kept / "360p" / name).exists() for name in segments)
    assert hls(stack, "pattern-four/master.m3u8").status_code == 404  # no longer served as live
