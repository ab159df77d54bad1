"""P9: live streams (docs/streaming.md).

Target (DESIGN 5): the passthrough + 480p + 360p ladder ≤ 50% of the machine's CPU;
glass-to-glass ≤ 5 s; chat to 500 viewers p95 ≤ 250 ms.

One stack (the layout of ``make run``: two web processes, the workers and beat) with the
stream ingest (``manage.py stream_ingest``: nginx-rtmp, its callbacks, one ffmpeg ladder
per live stream) on a private STREAMING_DIR and free ports. Streams are made through
``POST /api/v1/streams/`` and published over RTMP with the secret key it answers.

1. **Ladder CPU.** A 720p30 H.264/AAC source (ffmpeg's lavfi ``testsrc2`` and a sine, at
   the bit rate OBS sends) is made once, then published in a loop with ``ffmpeg -re
   -stream_loop -1 -i source -c copy -f flv rtmp://...``: copying costs the publisher next
   to nothing, so what the machine spends goes to the ladder. Once the stream is live and
   a warm-up has passed, a window measures CPU seconds per second (``/proc/<pid>/stat``)
   of the transcoder (the ffmpeg whose command line reads ``/live/<stream key>``), nginx
   (its master and workers) and the ingest supervisor itself; their sum over the cores
   (``os.cpu_count()``) is the share of the machine. The segments the 360p rendition got
   meanwhile show the ladder kept up with real time.
2. **Glass-to-glass.** A second stream whose every frame carries the wall-clock time it
   was made (``clock_frame``: 64 big black and white blocks holding a marker, the time in
   ms and a CRC-8), written by a generator paced to 30 frames a second into an ffmpeg
   publisher's stdin (raw gray 1280x720, x264 ultrafast/zerolatency, a keyframe a second,
   a sine for audio). A viewer per rendition (360p and the source) acts as a player:
   polls its playlist every PLAYLIST_POLL_SECONDS, downloads each new segment as soon as
   it is listed, decodes it with ffmpeg (one thread; the band of blocks cropped, scaled to
   640 px wide, gray) and reads the time back from each frame (``read_clock``). Latency =
   when the decoded frame was available at the viewer − the time burned into it. A player adds its buffer on top: hls.js starts
   ``liveSyncDurationCount`` (3) target durations behind the live edge, so the *player's
   view* is the figure + 3 × the target duration.
3. **Chat fan-out.** V viewers (recipients seeded with SQL, tokens minted in one
   ``manage.py shell``: bench/p3_sockets.py) hold ``/ws/streams/{key}/chat/?token=`` on
   the first stream while it is live (light sockets in a few client processes:
   bench/wsclient.py); its owner (exempt from the chat's rate limits) posts N messages at
   a steady rate on a socket of its own. Latency per message per viewer = arrival − send.

Baselines, same run: **ffmpeg alone** running the very ``ladder_command()`` argv, reading
the source file in real time (``-re``) into a temporary directory, measured the same way
on the quiet machine before the stack starts; and a **bare Redis PUBLISH to V bare
websocket clients** (bench/p2_baseline.py's server) at the chat's rate, beside the same
live ladder as the chat.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench import p2_baseline
from bench.p3_sockets import mint_tokens, seed_recipients
from bench.stack import (
    MACHINE_CPU,
    OTHER_CPU,
    Progress,
    Stack,
    bench_stack,
    cpu_sample,
    cpu_seconds,
    percentile,
    raise_fd_limit,
    wait_for,
)
from bench.wsclient import ClientPool
from harness.processes import free_port, proc_stats
from project.processes import DEFAULT_WEB_PROCESSES
from streaming.services.media import RENDITIONS, ladder_command

LADDER_SHARE_TARGET = 0.5  # of the machine
GLASS_TO_GLASS_TARGET_S = 5.0
CHAT_P95_TARGET_MS = 250.0
VIEWERS_TARGET = 500

FFMPEG = os.environ.get("STREAMING_FFMPEG") or "ffmpeg"
WIDTH, HEIGHT, FPS = 1280, 720, 30
SEGMENT_SECONDS = 1  # STREAMING_SEGMENT_SECONDS, the setting's default, set for the stack
# hls.js's default liveSyncDurationCount: a player starts this many target durations
# behind the live edge.
PLAYER_SYNC_SEGMENTS = 3
# The renditions whose glass-to-glass is read: the smallest and the source passed through.
LATENCY_RENDITIONS = ("360p", "source")
PLAYLIST_POLL_SECONDS = 0.1
# The viewer decodes every rendition and keeps the code band (clock_frame) at this size:
# the source's halved, 360p's as it is.
READ_WIDTH, READ_HEIGHT = 640, 160
CLOCK = os.sysconf("SC_CLK_TCK")

# The parts of a ladder's CPU, as measured; the first three are the ladder.
TRANSCODER, NGINX, INGEST, PUBLISHER = "transcoder", "nginx", "ingest", "publisher"
LADDER_PARTS = (TRANSCODER, NGINX, INGEST)

# A chat message: the marker and its number, then words to a chat line's usual length.
CHAT_MARK = "p9-"
CHAT_FILLER = "what a play, did everyone see that"


# --- The clock burned into the frames --------------------------------------------------------------

# 16 × 4 blocks of 80 px at the top of the 1280x720 frame: at 360p they are 40 px, far
# larger than what scaling and compression blur. 64 bits: a head marker, the time in ms
# (48 bits), a CRC-8 of it, a tail marker; a frame whose bits do not check out is not read.
BLOCK = 80
CODE_COLUMNS, CODE_ROWS = WIDTH // BLOCK, 4
CODE_BITS = CODE_COLUMNS * CODE_ROWS
HEAD_MARK, TAIL_MARK = (1, 0, 1, 0), (0, 1, 0, 1)
# Where a block is sampled, as fractions of its size from its centre.
SAMPLES = ((0.0, 0.0), (-0.25, 0.0), (0.25, 0.0), (0.0, -0.25), (0.0, 0.25))
_WHITE, _BLACK = b"\xff" * BLOCK, b"\x00" * BLOCK
_BELOW = b"\x80" * (WIDTH * (HEIGHT - CODE_ROWS * BLOCK))


def crc8(data: bytes) -> int:
    """CRC-8 (polynomial 0x07) of ``data``."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def clock_bits(ms: int) -> list[int]:
    """The 64 bits a frame made at ``ms`` (ms since the epoch) carries."""
    payload = ms.to_bytes(6, "big")
    body = payload + bytes((crc8(payload),))
    return [*HEAD_MARK, *((byte >> (7 - k)) & 1 for byte in body for k in range(8)), *TAIL_MARK]


def bits_clock(bits: Sequence[int]) -> int | None:
    """The time (ms) in ``bits``, or None when the markers or the CRC do not check out."""
    if len(bits) != CODE_BITS or tuple(bits[:4]) != HEAD_MARK or tuple(bits[-4:]) != TAIL_MARK:
        return None
    body = bytes(
        sum(bit << (7 - k) for k, bit in enumerate(bits[start : start + 8])) for start in range(4, 60, 8)
    )
    return int.from_bytes(body[:6], "big") if crc8(body[:6]) == body[6] else None


def clock_frame(ms: int) -> bytes:
    """One raw gray 1280x720 frame carrying ``ms`` in its blocks (white = 1), mid-gray below."""
    bits = clock_bits(ms)
    rows = [
        b"".join(_WHITE if bit else _BLACK for bit in bits[row * CODE_COLUMNS : (row + 1) * CODE_COLUMNS])
        * BLOCK
        for row in range(CODE_ROWS)
    ]
    return b"".join(rows) + _BELOW


def read_clock(band: bytes, width: int, height: int) -> int | None:
    """The time burned into the code band of a decoded gray frame (the top CODE_ROWS
    blocks of the picture, scaled to ``width`` × ``height``), or None when it cannot be read."""
    block_w, block_h = width / CODE_COLUMNS, height / CODE_ROWS
    bits = []
    for index in range(CODE_BITS):
        row, column = divmod(index, CODE_COLUMNS)
        x0, y0 = (column + 0.5) * block_w, (row + 0.5) * block_h
        total = sum(band[int(y0 + dy * block_h) * width + int(x0 + dx * block_w)] for dx, dy in SAMPLES)
        bits.append(1 if total > 128 * len(SAMPLES) else 0)
    return bits_clock(bits)


# --- Results ---------------------------------------------------------------------------------------


@dataclass
class CpuWindow:
    """CPU seconds per second (cores) of a ladder's processes over a steady window."""

    name: str
    seconds: float
    cpu_count: int
    cores: dict[str, float]  # by part (LADDER_PARTS, the publisher), and the machine
    segments: int  # of the 360p rendition, written during the window
    pids: dict[str, list[int]] = field(default_factory=dict)

    @property
    def ladder_cores(self) -> float:
        return sum(self.cores.get(part, 0.0) for part in LADDER_PARTS)

    @property
    def ladder_share(self) -> float:
        """Of the whole machine (all its cores)."""
        return self.ladder_cores / self.cpu_count if self.cpu_count else math.nan

    @property
    def segments_per_second(self) -> float:
        """Segments of SEGMENT_SECONDS each: 1.0 keeps up with real time."""
        return self.segments * SEGMENT_SECONDS / self.seconds if self.seconds else math.nan


@dataclass
class Latency:
    """Glass-to-glass of one rendition: the time burned into each frame against the time
    the viewer had it decoded."""

    rendition: str
    seconds: float
    segments: int
    frames: int  # decoded
    read: int  # whose clock was read
    target_duration_s: float  # EXT-X-TARGETDURATION
    p50_s: float
    p95_s: float
    max_s: float
    min_s: float
    listed_p50_s: float  # made → its segment listed in the playlist (the server's share)
    viewer_p50_s: float  # listed → decoded (download and decode at the viewer)
    errors: list[str] = field(default_factory=list)

    @property
    def player_p50_s(self) -> float:
        """What a player sitting PLAYER_SYNC_SEGMENTS target durations behind adds."""
        return self.p50_s + PLAYER_SYNC_SEGMENTS * self.target_duration_s

    @property
    def player_p95_s(self) -> float:
        return self.p95_s + PLAYER_SYNC_SEGMENTS * self.target_duration_s

    @property
    def meets_target(self) -> bool:
        return self.read > 0 and self.player_p95_s <= GLASS_TO_GLASS_TARGET_S


@dataclass
class ChatRun:
    """Messages to every connected socket: the platform's chat, or the bare baseline."""

    name: str
    sockets: int  # asked for
    connected: int
    messages: int
    rate: float
    seconds: float  # from the first send to the last delivery waited for
    expected: int  # messages × connected
    delivered: int
    duplicates: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    # send → the message's ``ts`` (taken as chat_post begins, on the server's clock); NaN for the baseline
    stored_p50_ms: float
    other_frames: dict[str, int]
    refused: list[str]  # error frames the poster got
    cpu_seconds: dict[str, float]

    @classmethod
    def of(
        cls,
        name: str,
        *,
        sockets: int,
        connected: int,
        messages: int,
        rate: float,
        seconds: float,
        latencies_ms: Sequence[float],
        duplicates: int,
        stored_ms: Sequence[float],
        other: dict[str, int],
        refused: list[str],
        cpu: dict[str, float],
    ) -> ChatRun:
        return cls(
            name=name,
            sockets=sockets,
            connected=connected,
            messages=messages,
            rate=rate,
            seconds=seconds,
            expected=messages * connected,
            delivered=len(latencies_ms),
            duplicates=duplicates,
            p50_ms=percentile(latencies_ms, 0.50),
            p95_ms=percentile(latencies_ms, 0.95),
            p99_ms=percentile(latencies_ms, 0.99),
            max_ms=max(latencies_ms, default=math.nan),
            stored_p50_ms=percentile(stored_ms, 0.50),
            other_frames=other,
            refused=refused[:5],
            cpu_seconds={name: round(value, 3) for name, value in cpu.items()},
        )

    @property
    def meets_target(self) -> bool:
        return (
            self.connected >= VIEWERS_TARGET
            and self.delivered == self.expected > 0
            and self.p95_ms <= CHAT_P95_TARGET_MS
        )


@dataclass
class P9Result:
    source: str  # what was published for the ladder
    cpu_count: int
    web_processes: int
    client_processes: int
    load_before: str  # /proc/loadavg when the run began
    baseline: CpuWindow  # ffmpeg alone
    ladder: CpuWindow | None
    latency: list[Latency]
    chat: ChatRun | None
    chat_baseline: ChatRun | None
    late_frames: int  # frames the clock generator wrote more than a frame late
    notes: list[str] = field(default_factory=list)

    @property
    def ladder_meets_target(self) -> bool | None:
        return None if self.ladder is None else self.ladder.ladder_share <= LADDER_SHARE_TARGET

    @property
    def latency_meets_target(self) -> bool | None:
        return all(r.meets_target for r in self.latency) if self.latency else None

    @property
    def chat_meets_target(self) -> bool | None:
        return None if self.chat is None else self.chat.meets_target

    @property
    def meets_target(self) -> bool:
        return bool(self.ladder_meets_target and self.latency_meets_target and self.chat_meets_target)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for window, row in ((self.baseline, data["baseline"]), (self.ladder, data["ladder"])):
            if window is not None:
                row["ladder_cores"] = window.ladder_cores
                row["ladder_share"] = window.ladder_share
                row["segments_per_second"] = window.segments_per_second
        for rendition, row in zip(self.latency, data["latency"], strict=True):
            row["player_p50_s"] = rendition.player_p50_s
            row["player_p95_s"] = rendition.player_p95_s
            row["meets_target"] = rendition.meets_target
        for run, key in ((self.chat, "chat"), (self.chat_baseline, "chat_baseline")):
            if run is not None:
                data[key]["meets_target"] = run.meets_target
        data["ladder_meets_target"] = self.ladder_meets_target
        data["latency_meets_target"] = self.latency_meets_target
        data["chat_meets_target"] = self.chat_meets_target
        data["meets_target"] = self.meets_target
        data["target"] = {
            "ladder_share": LADDER_SHARE_TARGET,
            "glass_to_glass_s": GLASS_TO_GLASS_TARGET_S,
            "chat_p95_ms": CHAT_P95_TARGET_MS,
            "viewers": VIEWERS_TARGET,
            "player_sync_segments": PLAYER_SYNC_SEGMENTS,
            "segment_seconds": SEGMENT_SECONDS,
        }
        return data

    def summary(self) -> str:
        lines = []
        for window in (self.baseline, self.ladder):
            if window is None:
                continue
            parts = ", ".join(
                f"{name} {window.cores.get(name, 0.0):.2f}" for name in (*LADDER_PARTS, PUBLISHER)
            )
            lines.append(
                f"P9 ladder, {window.name}: {window.ladder_cores:.2f} cores = {window.ladder_share * 100:.0f}% of "
                f"{window.cpu_count} cores ({parts}; machine {window.cores.get(MACHINE_CPU, math.nan):.2f}); "
                f"{window.segments_per_second:.2f} segments/s"
            )
        for rendition in self.latency:
            lines.append(
                f"P9 glass-to-glass, {rendition.rendition}: {rendition.read:,}/{rendition.frames:,} frames read in "
                f"{rendition.segments} segments; decoded at the viewer p50 {rendition.p50_s:.2f} s, p95 "
                f"{rendition.p95_s:.2f} s, max {rendition.max_s:.2f} s (listed p50 {rendition.listed_p50_s:.2f} s); "
                f"a player {PLAYER_SYNC_SEGMENTS} × {rendition.target_duration_s:g} s behind: p50 "
                f"{rendition.player_p50_s:.2f} s, p95 {rendition.player_p95_s:.2f} s "
                f"(target ≤ {GLASS_TO_GLASS_TARGET_S:g} s)"
            )
        for run in (self.chat, self.chat_baseline):
            if run is None:
                continue
            lines.append(
                f"P9 {run.name}: {run.connected}/{run.sockets} sockets, {run.messages} messages at {run.rate:g}/s: "
                f"{run.delivered:,}/{run.expected:,} delivered, p50 {run.p50_ms:.1f} ms, p95 {run.p95_ms:.1f} ms, "
                f"p99 {run.p99_ms:.1f} ms, max {run.max_ms:.1f} ms; web {run.cpu_seconds.get('web', 0.0):.2f} CPU s"
            )
        if self.late_frames:
            lines.append(f"P9 the clock generator wrote {self.late_frames} frames more than a frame late")
        lines += [f"P9 note: {note}" for note in self.notes]
        lines.append(
            f"P9 targets met: ladder {self.ladder_meets_target}, glass-to-glass {self.latency_meets_target}, "
            f"chat {self.chat_meets_target}"
        )
        return "\n".join(lines)


# --- Processes ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def running(argv: Sequence[str], log_path: Path, **kwargs: Any) -> Iterator[subprocess.Popen[bytes]]:
    """``argv`` running, its output to ``log_path``; interrupted (then killed) on exit."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(list(argv), stdout=log, stderr=log, **kwargs)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # ffmpeg finishes its outputs
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _ticks(pid: int) -> int | None:
    """User + system clock ticks of ``pid`` (all its threads), None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def _command_line(pid: int) -> list[str]:
    try:
        return [
            part.decode(errors="replace") for part in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        ]
    except OSError:
        return []


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, fields in proc_stats():
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(pid)
    found, pending = [], [root]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def ingest_parts(ingest_pid: int, stream_key: str) -> dict[str, list[int]]:
    """The pids of the ingest supervisor, its nginx (master and workers) and the ffmpeg
    transcoding the stream published with the secret ``stream_key``."""
    parts: dict[str, list[int]] = {INGEST: [ingest_pid], NGINX: [], TRANSCODER: []}
    for pid in _descendants(ingest_pid):
        argv = _command_line(pid)
        if not argv or not argv[0]:
            continue
        program = Path(argv[0].split()[0]).name
        if program.startswith("nginx"):
            parts[NGINX].append(pid)
        elif program == "ffmpeg" and any(arg.endswith(f"/live/{stream_key}") for arg in argv):
            parts[TRANSCODER].append(pid)
    return parts


def last_segment(playlist: Path) -> int | None:
    """The number of the last segment ``playlist`` lists (ffmpeg numbers them in order)."""
    try:
        names = [line for line in playlist.read_text().splitlines() if line and not line.startswith("#")]
    except OSError:
        return None
    numbers = re.findall(r"(\d+)\.ts$", names[-1]) if names else []
    return int(numbers[0]) if numbers else None


def cpu_window(
    name: str, parts: dict[str, list[int]], playlist: Path, *, seconds: float, progress: bool
) -> CpuWindow:
    """CPU seconds per second of each part's processes over ``seconds``, the machine's
    too, and the segments ``playlist`` gained meanwhile."""
    before = {pid: _ticks(pid) for pids in parts.values() for pid in pids}
    machine_before, first = cpu_sample().machine_busy, last_segment(playlist)
    started = time.monotonic()
    bar = Progress(f"P9 ladder CPU, {name}", int(seconds), enabled=progress)
    while (elapsed := time.monotonic() - started) < seconds:
        bar.update(int(elapsed))
        time.sleep(min(0.5, seconds - elapsed))
    after = {pid: _ticks(pid) for pid in before}
    machine_after, last = cpu_sample().machine_busy, last_segment(playlist)
    elapsed = time.monotonic() - started
    bar.finish(int(seconds))
    cores: dict[str, float] = {}
    for part, pids in parts.items():
        ticks = 0
        for pid in pids:
            start, end = before.get(pid), after.get(pid)
            if start is not None and end is not None and end >= start:
                ticks += end - start
        cores[part] = round(ticks / CLOCK / elapsed, 4)
    cores[MACHINE_CPU] = round((machine_after - machine_before) / CLOCK / elapsed, 4)
    return CpuWindow(
        name=name,
        seconds=elapsed,
        cpu_count=os.cpu_count() or 1,
        cores=cores,
        segments=(last - first) if first is not None and last is not None else 0,
        pids=parts,
    )


# --- The source and the baseline --------------------------------------------------------------------


def make_source(path: Path, *, seconds: float) -> Path:
    """A 720p30 H.264/AAC file of ``seconds``: lavfi's testsrc2 (a moving picture, so the
    encoders have work) and a sine, a keyframe a second, at a streamer's bit rate."""
    subprocess.run(
        [FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
         "-f", "lavfi", "-i", f"testsrc2=size={WIDTH}x{HEIGHT}:rate={FPS}",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
         "-t", f"{seconds:g}", "-map", "0:v", "-map", "1:a",
         "-c:v", "libx264", "-preset", "veryfast", "-b:v", "3000k", "-maxrate", "3000k", "-bufsize", "6000k",
         "-g", str(FPS), "-keyint_min", str(FPS), "-sc_threshold", "0", "-pix_fmt", "yuv420p",
         "-c:a", "aac", "-b:a", "128k", "-movflags", "+faststart", str(path)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return path


def ladder_alone_argv(source: Path, output: Path) -> list[str]:
    """``ladder_command()``'s argv for ``output``, reading ``source`` in a loop at its
    native rate (``-re``) instead of the RTMP stream."""
    argv = ladder_command(
        FFMPEG, source_url=str(source), output=output, segment_seconds=SEGMENT_SECONDS, record=False
    )
    at = argv.index("-i")
    return [*argv[:at], "-re", "-stream_loop", "-1", *argv[at:]]


def ladder_alone(
    source: Path, directory: Path, *, seconds: float, warmup: float, progress: bool
) -> CpuWindow:
    """The baseline: ffmpeg alone doing the ladder of ``source`` in real time."""
    output = directory / "alone"
    for rendition in RENDITIONS:
        (output / rendition).mkdir(parents=True, exist_ok=True)
    with running(
        ladder_alone_argv(source, output), directory / "ffmpeg-alone.log", stdin=subprocess.DEVNULL
    ) as ffmpeg:
        wait_for(
            lambda: ffmpeg.poll() is not None or last_segment(output / "360p" / "index.m3u8") is not None,
            60,
            "ffmpeg alone wrote no segment",
        )
        if ffmpeg.poll() is not None:
            raise RuntimeError(
                f"ffmpeg alone exited with {ffmpeg.returncode}; see {directory}/ffmpeg-alone.log"
            )
        time.sleep(warmup)
        window = cpu_window(
            "ffmpeg alone",
            {TRANSCODER: [ffmpeg.pid]},
            output / "360p" / "index.m3u8",
            seconds=seconds,
            progress=progress,
        )
    shutil.rmtree(output, ignore_errors=True)
    return window


def publish_file_argv(source: Path, url: str) -> list[str]:
    """A publisher looping ``source`` over RTMP at its native rate, copying its streams."""
    return [FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-re", "-stream_loop", "-1",
            "-i", str(source), "-c", "copy", "-f", "flv", url]  # fmt: skip


# --- Streams on the stack --------------------------------------------------------------------------


def streaming_env(directory: Path) -> dict[str, str]:
    """The stream ingest's settings for a stack: a private directory and free ports."""
    ports: set[int] = set()
    while len(ports) < 3:
        ports.add(free_port())
    rtmp, http, callback = sorted(ports)
    return {
        "STREAMING_DIR": str(directory),
        "STREAMING_RTMP_PORT": str(rtmp),
        "STREAMING_HTTP_PORT": str(http),
        "STREAMING_CALLBACK_PORT": str(callback),
        "STREAMING_SEGMENT_SECONDS": str(SEGMENT_SECONDS),
    }


@dataclass
class Published:
    """A stream made through the API."""

    key: str
    stream_key: str
    ingest_url: str

    @property
    def publish_url(self) -> str:
        return f"{self.ingest_url}/{self.stream_key}"


def stream_create(stack: Stack, *, key: str, owner: str) -> Published:
    with stack.client() as client:
        response = client.post("/api/v1/streams/", json={"key": key, "title": f"P9 {key}", "owner": owner})
    if response.status_code != 201:
        raise RuntimeError(f"POST /api/v1/streams/ answered {response.status_code}: {response.text}")
    body = response.json()
    return Published(key=key, stream_key=str(body["stream_key"]), ingest_url=str(body["ingest_url"]))


def wait_live(
    stack: Stack, key: str, publisher: subprocess.Popen[bytes], log_path: Path, timeout: float = 90
) -> None:
    """Until ``GET /api/v1/streams/{key}/`` says live; RuntimeError when the publisher or
    a process of the stack exits first."""
    with stack.client() as client:

        def live() -> bool:
            stack.check_alive()
            if publisher.poll() is not None:
                raise RuntimeError(
                    f"the publisher of {key} exited with {publisher.returncode}: {log_path.read_text()[-2000:]}"
                )
            response = client.get(f"/api/v1/streams/{key}/")
            return response.status_code == 200 and response.json().get("status") == "live"

        try:
            wait_for(live, timeout, f"stream {key} never went live", interval=0.2)
        except TimeoutError as error:
            raise TimeoutError(f"{error}\n{stack.log_tails(30)}") from None


# --- Glass-to-glass ----------------------------------------------------------------------------------


class ClockPublisher:
    """ffmpeg publishing frames that carry the time they were made: a thread writes one
    ``clock_frame`` to its stdin every 1/FPS s (absolute deadlines), stamped just before
    the write."""

    def __init__(self, url: str, log_path: Path) -> None:
        argv = [
            FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin",
            "-f", "rawvideo", "-pix_fmt", "gray", "-s", f"{WIDTH}x{HEIGHT}", "-r", str(FPS), "-i", "pipe:0",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
            "-map", "0:v", "-map", "1:a",
            "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", str(FPS),
            "-keyint_min", str(FPS), "-sc_threshold", "0", "-pix_fmt", "yuv420p",
            "-c:a", "aac", "-b:a", "96k", "-f", "flv", url,
        ]  # fmt: skip
        self.log_path = log_path
        self.stopping = threading.Event()
        self.frames = 0
        self.late = 0  # frames written more than a frame after their deadline
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=log, stderr=log)
        self.thread = threading.Thread(target=self._write, name="p9-clock", daemon=True)
        self.thread.start()

    def _write(self) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        started = time.perf_counter()
        while not self.stopping.is_set():
            delay = started + self.frames / FPS - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            elif delay < -1 / FPS:
                self.late += 1
            try:
                stdin.write(clock_frame(int(time.time() * 1000)))
                stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                return
            self.frames += 1

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        with contextlib.suppress(OSError, ValueError):
            if self.process.stdin is not None:
                self.process.stdin.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> ClockPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _playlist(text: str) -> tuple[float, list[str]]:
    """(EXT-X-TARGETDURATION, segment names) of a media playlist."""
    target, names = math.nan, []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("#EXT-X-TARGETDURATION:"):
            target = float(line.split(":", 1)[1])
        elif line and not line.startswith("#"):
            names.append(line)
    return target, names


def decode_clocks(segment: Path) -> list[tuple[float, int | None]]:
    """(wall time the frame was decoded, the time read from it) of each video frame of
    ``segment``, read off the decoder's output as it comes (its code band only)."""
    size = READ_WIDTH * READ_HEIGHT
    band = f"crop=iw:ih*{CODE_ROWS * BLOCK}/{HEIGHT}:0:0,scale={READ_WIDTH}:{READ_HEIGHT}"
    # One decoding thread, as a player decodes one stream: the viewers share the cores
    # with the ladder they measure.
    process = subprocess.Popen(
        [FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-threads", "1", "-i", str(segment), "-an",
         "-vf", band, "-pix_fmt", "gray", "-f", "rawvideo", "pipe:1"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert process.stdout is not None
    frames = []
    with process.stdout:
        while len(frame := process.stdout.read(size)) == size:
            frames.append((time.time(), read_clock(frame, READ_WIDTH, READ_HEIGHT)))
    process.wait()
    return frames


class Viewer(threading.Thread):
    """A player of one rendition: polls its playlist, takes each segment listed after it
    started as soon as it appears, decodes it and reads the clocks."""

    def __init__(self, base_url: str, rendition: str, directory: Path) -> None:
        super().__init__(name=f"p9-viewer-{rendition}", daemon=True)
        self.playlist_url = f"{base_url}/{rendition}/index.m3u8"
        self.segment_base = f"{base_url}/{rendition}/"
        self.rendition = rendition
        self.directory = directory
        self.stopping = threading.Event()
        self.recording = threading.Event()
        self.target = math.nan
        self.segments = 0
        self.frames = 0
        self.latencies: list[float] = []  # decoded at the viewer − made
        self.listed: list[float] = []  # listed − made
        self.viewer: list[float] = []  # decoded − listed
        self.errors: list[str] = []

    def run(self) -> None:
        seen: set[str] = set()
        first = True
        with httpx.Client(timeout=5) as http:
            while not self.stopping.is_set():
                try:
                    response = http.get(self.playlist_url)
                except httpx.HTTPError as exc:
                    self._error(f"playlist: {type(exc).__name__}")
                    time.sleep(PLAYLIST_POLL_SECONDS)
                    continue
                if response.status_code != 200:
                    time.sleep(PLAYLIST_POLL_SECONDS)
                    continue
                target, names = _playlist(response.text)
                listed_at = time.time()
                fresh = [name for name in names if name not in seen]
                seen.update(fresh)
                if first:
                    # What was listed before the viewer came is old: a player joining
                    # would not see it at once either.
                    first = False
                    fresh = []
                for name in fresh:
                    self._take(http, name, listed_at, target)
                    if self.stopping.is_set():
                        return
                time.sleep(PLAYLIST_POLL_SECONDS)

    def _take(self, http: httpx.Client, name: str, listed_at: float, target: float) -> None:
        try:
            response = http.get(self.segment_base + name)
        except httpx.HTTPError as exc:
            self._error(f"segment: {type(exc).__name__}")
            return
        if response.status_code != 200:
            self._error(f"segment: HTTP {response.status_code}")
            return
        path = self.directory / f"{self.rendition}-{Path(name).name}"
        path.write_bytes(response.content)
        try:
            frames = decode_clocks(path)
        finally:
            path.unlink(missing_ok=True)
        if not self.recording.is_set():
            return
        self.target = target
        self.segments += 1
        self.frames += len(frames)
        for decoded_at, made_ms in frames:
            if made_ms is None:
                continue
            made = made_ms / 1000
            self.latencies.append(decoded_at - made)
            self.listed.append(listed_at - made)
            self.viewer.append(decoded_at - listed_at)

    def _error(self, text: str) -> None:
        if len(self.errors) < 5:
            self.errors.append(text)

    def result(self, seconds: float) -> Latency:
        return Latency(
            rendition=self.rendition,
            seconds=seconds,
            segments=self.segments,
            frames=self.frames,
            read=len(self.latencies),
            target_duration_s=self.target,
            p50_s=percentile(self.latencies, 0.50),
            p95_s=percentile(self.latencies, 0.95),
            max_s=max(self.latencies, default=math.nan),
            min_s=min(self.latencies, default=math.nan),
            listed_p50_s=percentile(self.listed, 0.50),
            viewer_p50_s=percentile(self.viewer, 0.50),
            errors=self.errors,
        )


def glass_to_glass(
    hls_base: str, directory: Path, *, seconds: float, warmup: float, progress: bool
) -> list[Latency]:
    """A viewer per LATENCY_RENDITIONS reading the stream at ``hls_base`` for ``seconds``
    after ``warmup``."""
    directory.mkdir(parents=True, exist_ok=True)
    viewers = [Viewer(hls_base, rendition, directory) for rendition in LATENCY_RENDITIONS]
    for viewer in viewers:
        viewer.start()
    try:
        time.sleep(warmup)
        for viewer in viewers:
            viewer.recording.set()
        started = time.monotonic()
        bar = Progress("P9 glass-to-glass", int(seconds), enabled=progress)
        while (elapsed := time.monotonic() - started) < seconds:
            bar.update(int(elapsed))
            time.sleep(min(0.5, seconds - elapsed))
        bar.finish(int(seconds))
        elapsed = time.monotonic() - started
    finally:
        for viewer in viewers:
            viewer.stopping.set()
        for viewer in viewers:
            viewer.join(30)
    return [viewer.result(elapsed) for viewer in viewers]


# --- Chat ----------------------------------------------------------------------------------------------


def chat_path(key: str, token: str) -> str:
    return f"/ws/streams/{key}/chat/?token={token}"


def _clients_cpu(pool: ClientPool) -> float:
    return sum((_ticks(process.pid) or 0) for process in pool.workers) / CLOCK


# Frames still missing after this long with none arriving count as lost (a stall of the
# stack under load lasts less: a wait cut short would count delivered frames as lost).
QUIET_SECONDS = 3.0


def _wait_deliveries(pool: ClientPool, wanted: int, timeout: float) -> None:
    """Until ``wanted`` frames are recorded, or none came for QUIET_SECONDS, or ``timeout``."""
    deadline = time.monotonic() + timeout
    count, last_change = pool.recorded(), time.monotonic()
    while count < wanted and time.monotonic() < deadline and time.monotonic() - last_change < QUIET_SECONDS:
        time.sleep(0.05)
        now = pool.recorded()
        if now != count:
            count, last_change = now, time.monotonic()


def _chat_text(number: int) -> str:
    return f"{CHAT_MARK}{number} {CHAT_FILLER}"


def _warm(pool: ClientPool, viewers: int, send: Any, *, attempts: int = 5) -> int:
    """Warm-up messages until every viewer got one (its socket is in the group); returns
    how many did."""
    reached = 0
    for attempt in range(attempts):
        pool.take("raw")
        pool.record(True)
        text = f"warm-{attempt}"
        send(text)
        _wait_deliveries(pool, viewers, 10)
        pool.record(False)
        got = {
            index for index, _, payload in pool.take("raw") if text.encode() in payload and index < viewers
        }
        reached = len(got)
        if reached >= viewers:
            break
    return reached


def chat_fanout(
    stack: Stack,
    *,
    key: str,
    viewer_tokens: Sequence[str],
    owner_token: str,
    messages: int,
    rate: float,
    client_processes: int,
    progress: bool,
) -> tuple[ChatRun | None, list[str]]:
    """Every viewer on the stream's chat socket, the owner posting ``messages`` at
    ``rate``; (the run, notes). None when no socket opened (the chat socket is missing)."""
    notes: list[str] = []
    viewers = len(viewer_tokens)
    poster = viewers  # the last socket
    paths = [chat_path(key, token) for token in [*viewer_tokens, owner_token]]
    with ClientPool(client_processes) as pool:
        bar = Progress(f"P9 chat: opening {len(paths):,} sockets", len(paths), enabled=progress)
        # Each socket counts once its history came: it is in the chat's group by then.
        opened, errors, _ = pool.open(stack.ws_url, paths, concurrency=50, wait_first=True)
        bar.finish(opened)
        if opened == 0:
            return None, [
                f"No chat socket opened ({', '.join(errors) or 'no error reported'}): chat not measured."
            ]
        if opened < len(paths):
            notes.append(f"{len(paths) - opened} of {len(paths)} chat sockets did not open: {errors}")

        def send(text: str) -> list[tuple[int, float]]:
            return pool.send([(poster, json.dumps({"type": "message", "text": text}))])

        reached = _warm(pool, viewers, send)
        if reached < viewers:
            notes.append(f"warm-up messages reached {reached} of {viewers} viewers")
        time.sleep(1.0)
        pool.take("raw")
        pool.record(True)
        wall_offset = time.time() - time.perf_counter()
        before, clients_before = cpu_sample(), _clients_cpu(pool)
        started = time.perf_counter()
        sent_at: dict[str, float] = {}
        bar = Progress(f"P9 chat: {messages} messages to {viewers:,} viewers", messages, enabled=progress)
        for number in range(messages):
            delay = started + number / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            text = _chat_text(number)
            for _, at in send(text):
                sent_at[text] = at
            bar.update(number + 1)
        bar.finish(messages)
        _wait_deliveries(pool, (viewers + 1) * messages, 30)
        ended = time.perf_counter()
        after, clients_after = cpu_sample(), _clients_cpu(pool)
        pool.record(False)
        rows = pool.take("raw")
        connected = min(viewers, pool.count())
    latencies, stored, other, refused, duplicates = _chat_rows(rows, sent_at, viewers, poster, wall_offset)
    cpu = cpu_seconds(stack, before, after)
    cpu["clients"] = clients_after - clients_before
    cpu[OTHER_CPU] = max(0.0, cpu.get(OTHER_CPU, 0.0) - cpu["clients"])
    stack.check_alive()
    run = ChatRun.of(
        "chat",
        sockets=viewers,
        connected=connected,
        messages=len(sent_at),
        rate=rate,
        seconds=ended - started,
        latencies_ms=latencies,
        duplicates=duplicates,
        stored_ms=stored,
        other=other,
        refused=refused,
        cpu=cpu,
    )
    return run, notes


def _chat_rows(
    rows: Sequence[tuple[int, float, bytes]],
    sent_at: dict[str, float],
    viewers: int,
    poster: int,
    wall_offset: float,
) -> tuple[list[float], list[float], dict[str, int], list[str], int]:
    """(latencies ms, send → ts ms, other frames by type, the poster's error frames,
    duplicates) of the frames recorded: one latency per message per viewer."""
    latencies: list[float] = []
    stored: list[float] = []
    other: dict[str, int] = {}
    refused: list[str] = []
    seen: set[tuple[int, str]] = set()
    stored_for: set[str] = set()
    duplicates = 0
    for index, arrival, payload in rows:
        try:
            frame = json.loads(payload)
        except ValueError:
            other["not json"] = other.get("not json", 0) + 1
            continue
        kind = str(frame.get("type")) if isinstance(frame, dict) else "?"
        text = frame.get("text") if isinstance(frame, dict) else None
        if index == poster:
            if kind == "error":
                refused.append(json.dumps(frame)[:200])
            continue
        if kind != "message" or text not in sent_at or index >= viewers:
            other[kind] = other.get(kind, 0) + 1
            continue
        if (index, text) in seen:
            duplicates += 1
            continue
        seen.add((index, text))
        latencies.append((arrival - sent_at[text]) * 1000)
        if text not in stored_for:
            stored_for.add(text)
            moment = _epoch(frame.get("ts"))
            if moment is not None:
                stored.append((moment - (sent_at[text] + wall_offset)) * 1000)
    return latencies, stored, other, refused, duplicates


def _epoch(value: Any) -> float | None:
    if isinstance(value, int | float):
        return float(value) / (1000 if value > 1e11 else 1)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return None


def chat_baseline(
    stack: Stack, *, sockets: int, messages: int, rate: float, client_processes: int, progress: bool
) -> ChatRun:
    """The same messages at the same rate through a bare Redis PUBLISH to ``sockets`` bare
    websocket clients (bench/p2_baseline.py's server, on uvloop), each frame the size of
    the chat's."""
    import redis

    channel = f"{p2_baseline.CHANNEL_PREFIX}all"
    with p2_baseline.bare_server(stack, uvloop=True) as server, ClientPool(client_processes) as pool:
        opened, errors, _ = pool.open(
            f"ws://127.0.0.1:{server.port}", ["/all"] * sockets, concurrency=100, wait_first=False
        )
        if opened < sockets and progress:
            print(f"P9 chat baseline: {sockets - opened} sockets not opened: {errors}", flush=True)
        publisher = redis.Redis.from_url(stack.redis.url)

        def frame(number: int, text: str) -> str:
            return json.dumps(
                {"type": "message", "id": number, "author": "p9-owner", "name": "", "text": text,
                 "ts": datetime.now().astimezone().isoformat()}
            )  # fmt: skip

        try:
            _warm(pool, opened, lambda text: publisher.publish(channel, frame(-1, text)))
            pool.take("raw")
            pool.record(True)
            before, clients_before = cpu_sample(), _clients_cpu(pool)
            server_before = _ticks(server.process.pid) or 0
            started = time.perf_counter()
            sent_at: dict[str, float] = {}
            for number in range(messages):
                delay = started + number / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                text = _chat_text(number)
                body = frame(number, text)
                sent_at[text] = time.perf_counter()
                publisher.publish(channel, body)
            _wait_deliveries(pool, opened * messages, 30)
            ended = time.perf_counter()
            after, clients_after = cpu_sample(), _clients_cpu(pool)
            server_cpu = ((_ticks(server.process.pid) or 0) - server_before) / CLOCK
            pool.record(False)
            rows = pool.take("raw")
        finally:
            publisher.close()
    latencies, _, other, _, duplicates = _chat_rows(rows, sent_at, opened, -1, 0.0)
    cpu = cpu_seconds(stack, before, after)
    cpu["bare server"] = server_cpu
    cpu["clients"] = clients_after - clients_before
    cpu[OTHER_CPU] = max(0.0, cpu.get(OTHER_CPU, 0.0) - cpu["clients"] - server_cpu)
    return ChatRun.of(
        "bare Redis publish → bare websockets",
        sockets=sockets,
        connected=opened,
        messages=messages,
        rate=rate,
        seconds=ended - started,
        latencies_ms=latencies,
        duplicates=duplicates,
        stored_ms=[],
        other=other,
        refused=[],
        cpu=cpu,
    )


# --- The run ---------------------------------------------------------------------------------------------


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def run(
    *,
    template: str | None,
    seconds: float = 20.0,
    warmup: float = 5.0,
    source_seconds: float = 20.0,
    latency_seconds: float = 30.0,
    viewers: int = VIEWERS_TARGET,
    chat_rate: float = 2.0,
    chat_seconds: float = 20.0,
    client_processes: int = 2,
    progress: bool = True,
) -> P9Result:
    """The baseline (ffmpeg alone, ``seconds`` after ``warmup``) on the quiet machine; then
    on one stack: the ladder of the looped source (the same window), the chat on that
    stream while it is live (``viewers``, ``chat_rate`` messages a second for
    ``chat_seconds``) and its bare baseline, then the clock stream's glass-to-glass for
    ``latency_seconds`` after ``warmup``."""
    load_before = _load()
    raise_fd_limit(4 * viewers + 1024)
    notes: list[str] = []
    messages = max(1, int(round(chat_rate * chat_seconds)))
    with tempfile.TemporaryDirectory(prefix="p9-") as temporary:
        directory = Path(temporary)
        source = make_source(directory / "source.mp4", seconds=source_seconds)
        baseline = ladder_alone(source, directory, seconds=seconds, warmup=warmup, progress=progress)
        if progress:
            print(
                f"P9 baseline: ffmpeg alone {baseline.ladder_cores:.2f} cores "
                f"({baseline.ladder_share * 100:.0f}% of the machine)",
                flush=True,
            )
        env = streaming_env(directory / "streaming")
        with bench_stack(
            template=template, label="p9", web_processes=DEFAULT_WEB_PROCESSES, env=env
        ) as stack:
            stack.platform.start_stream_ingest()
            ingest = stack.platform.processes["streams"]
            assert ingest.pid is not None
            logs = stack.platform.log_dir
            suffix = uuid.uuid4().hex[:6]
            prefix = f"p9-{suffix}-"
            owner = f"{prefix}owner"
            looped = stream_create(stack, key=f"p9-ladder-{suffix}", owner=owner)
            clocked = stream_create(stack, key=f"p9-clock-{suffix}", owner=owner)
            seed_recipients(stack, prefix, viewers)
            tokens = mint_tokens(stack, prefix)
            hls = Path(env["STREAMING_DIR"]).resolve() / "hls"

            publisher_log = logs / "p9-publisher.log"
            with running(
                publish_file_argv(source, looped.publish_url), publisher_log, stdin=subprocess.DEVNULL
            ) as publisher:
                wait_live(stack, looped.key, publisher, publisher_log)
                time.sleep(warmup)
                parts = ingest_parts(ingest.pid, looped.stream_key)
                parts[PUBLISHER] = [publisher.pid]
                if not parts[TRANSCODER]:
                    notes.append(
                        "the transcoder of the looped stream was not found among the ingest's processes"
                    )
                ladder = cpu_window(
                    "the platform's ingest", parts, hls / looped.key / "360p" / "index.m3u8",
                    seconds=seconds, progress=progress,
                )  # fmt: skip
                chat, chat_notes = chat_fanout(
                    stack, key=looped.key, viewer_tokens=[tokens[f"{prefix}{n}"] for n in range(1, viewers + 1)],
                    owner_token=tokens[owner], messages=messages, rate=chat_rate,
                    client_processes=client_processes, progress=progress,
                )  # fmt: skip
                notes += chat_notes
                if progress and chat is not None:
                    print(
                        f"P9 chat: {chat.delivered:,}/{chat.expected:,} delivered, p95 {chat.p95_ms:.1f} ms",
                        flush=True,
                    )
                base_chat = chat_baseline(
                    stack, sockets=viewers, messages=messages, rate=chat_rate,
                    client_processes=client_processes, progress=progress,
                )  # fmt: skip

            clock_log = logs / "p9-clock-publisher.log"
            with ClockPublisher(clocked.publish_url, clock_log) as clock:
                wait_live(stack, clocked.key, clock.process, clock_log)
                port = env["STREAMING_HTTP_PORT"]
                latency = glass_to_glass(
                    f"http://127.0.0.1:{port}/hls/{clocked.key}", directory / "viewer",
                    seconds=latency_seconds, warmup=warmup, progress=progress,
                )  # fmt: skip
                late = clock.late
            stack.check_alive()
    return P9Result(
        source=f"{WIDTH}x{HEIGHT} {FPS} fps H.264 (testsrc2, 3 Mb/s, keyframe every 1 s) + AAC, "
        f"{source_seconds:g} s looped",
        cpu_count=os.cpu_count() or 1,
        web_processes=DEFAULT_WEB_PROCESSES,
        client_processes=client_processes,
        load_before=load_before,
        baseline=baseline,
        ladder=ladder,
        latency=latency,
        chat=chat,
        chat_baseline=base_chat,
        late_frames=late,
        notes=notes,
    )
