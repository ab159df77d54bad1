"""The ingest supervisor (``manage.py stream_ingest``): runs nginx with the RTMP module,
answers its callbacks, and keeps one ffmpeg ladder per live stream.

- ``on_publish`` (nginx asks before a publish goes on): the secret key must belong to a
  stream (``publish_authorize``); then the stream's transcoder starts. Any other answer
  than 2xx makes nginx refuse the publisher.
- The stream goes ``live`` once every rendition has a playlist with a segment in it, and
  its followers are told once per live session (streaming/services/streams.py).
- A transcoder that exits while its publisher is still connected is started again (with a
  growing pause, at most ``RESTART_PAUSE_MAX`` seconds); its segment numbers continue
  (they count from the clock), so players carry on.
- ``on_publish_done``: the publisher left. Back within ``grace_seconds``, it continues the
  same stream; otherwise the stream goes ``offline`` and its segments are deleted, or kept
  under ``recordings/`` when the stream asks for a recording.
- A stream cut off from the admin (``stream_cut_off``: its key rotated, a message on
  ``DROP_CHANNEL``) has its publisher dropped through nginx-rtmp's control handler and goes
  offline at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis
from aiohttp import ClientSession, ClientTimeout, web
from asgiref.sync import sync_to_async

from project.processes.children import die_with_parent
from project.processes.waiting import port_is_open
from streaming.services.media import (
    RENDITIONS,
    MediaSettings,
    finish_recording,
    ladder_command,
    nginx_config,
)
from streaming.services.streams import (
    DROP_CHANNEL,
    Publish,
    publish_authorize,
    stream_went_live,
    stream_went_offline,
    streams_offline_all,
)

log = logging.getLogger(__name__)

RESTART_PAUSE_MIN = 0.5
RESTART_PAUSE_MAX = 5.0
PLAYABLE_POLL_SECONDS = 0.2
# How long an ended stream's transcoder has to finish after its one SIGTERM: ffmpeg may sit
# in a read of the RTMP until its -rw_timeout (5 s, streaming/services/media.py) before it
# sees the signal and writes its last segment and playlists. Killed after that.
TRANSCODER_STOP_SECONDS = 8.0


@dataclass
class LiveStream:
    stream_id: str
    key: str
    name: str  # the secret key nginx knows the publish by
    record: bool
    session_id: int
    connected: bool = True
    announced: bool = False  # told the platform it is live, this session
    cut_off: bool = False
    transcoder: asyncio.Task[None] | None = None
    process: asyncio.subprocess.Process | None = None
    signalled: asyncio.subprocess.Process | None = None  # the process sent its SIGTERM
    grace: asyncio.TimerHandle | None = None
    restarts: int = 0
    started_at: float = field(default_factory=time.time)


class IngestSupervisor:
    def __init__(
        self,
        media: MediaSettings,
        *,
        nginx: str,
        ffmpeg: str,
        grace_seconds: float,
        redis_url: str,
    ) -> None:
        self.media = media
        self.nginx_bin = nginx
        self.ffmpeg = ffmpeg
        self.grace_seconds = grace_seconds
        self.redis_url = redis_url
        self.streams: dict[str, LiveStream] = {}  # by stream id
        self.names: dict[str, str] = {}  # secret key -> stream id
        self.nginx: asyncio.subprocess.Process | None = None
        self.stopping = asyncio.Event()
        self.refused = 0

    # -- running --

    async def run(self, *, ready: asyncio.Event | None = None) -> None:
        self._prepare()
        left = await sync_to_async(streams_offline_all)("the ingest restarted")
        if left:
            log.warning("ingest: %d streams left live by an ingest that stopped are offline now", left)
        runner = await self._serve_callbacks()
        client = aioredis.Redis.from_url(self.redis_url)
        pubsub = client.pubsub()
        await pubsub.subscribe(DROP_CHANNEL)
        drops = asyncio.create_task(self._read_drops(pubsub))
        try:
            await self._start_nginx()
            if ready is not None:
                ready.set()
            while not self.stopping.is_set():
                assert self.nginx is not None
                waiter = asyncio.create_task(self.nginx.wait())
                stop = asyncio.create_task(self.stopping.wait())
                await asyncio.wait({waiter, stop}, return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
                if self.stopping.is_set():
                    waiter.cancel()
                    break
                log.error(
                    "ingest: nginx exited (%s); its publishers are gone; starting it again", waiter.result()
                )
                for live in list(self.streams.values()):
                    self._publisher_left(live)
                await asyncio.sleep(RESTART_PAUSE_MIN)
                await self._start_nginx()
        finally:
            drops.cancel()
            await self._stop_all()
            with contextlib.suppress(Exception):
                await pubsub.aclose()
                await client.aclose()
            await runner.cleanup()

    def _prepare(self) -> None:
        media = self.media
        for sub in ("logs", "tmp", "hls", "recordings"):
            (media.directory / sub).mkdir(parents=True, exist_ok=True)
        # Nothing is live when the ingest starts: what a previous run left is stale.
        for stale in media.hls_dir.iterdir():
            shutil.rmtree(stale, ignore_errors=True)
        (media.directory / "nginx.conf").write_text(nginx_config(media))

    async def _start_nginx(self) -> None:
        config = self.media.directory / "nginx.conf"
        log_file = (self.media.directory / "logs" / "nginx.out").open("ab")
        self.nginx = await asyncio.create_subprocess_exec(
            self.nginx_bin, "-p", str(self.media.directory), "-c", str(config),
            stdout=log_file, stderr=log_file, stdin=asyncio.subprocess.DEVNULL,
            # SIGTERM: nginx's master stops its workers before it goes
            preexec_fn=functools.partial(die_with_parent, signal.SIGTERM, parent_pid=os.getpid()),
        )  # fmt: skip
        log_file.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.nginx.returncode is not None:
                raise RuntimeError(
                    f"nginx exited at start ({self.nginx.returncode}); see {config.parent}/logs"
                )
            if await asyncio.to_thread(port_is_open, self.media.bind, self.media.rtmp_port) and (
                await asyncio.to_thread(port_is_open, self.media.bind, self.media.http_port)
            ):
                log.info(
                    "ingest: nginx takes RTMP on %s and serves HLS on %s",
                    self.media.rtmp_port,
                    self.media.http_port,
                )
                return
            await asyncio.sleep(0.05)
        raise RuntimeError("nginx did not listen within 10 s")

    async def _stop_all(self) -> None:
        for live in list(self.streams.values()):
            await self._end(live, "the ingest stopped", force=True)
        if self.nginx is not None and self.nginx.returncode is None:
            self.nginx.terminate()
            try:
                await asyncio.wait_for(self.nginx.wait(), 5)
            except TimeoutError:
                self.nginx.kill()
                await self.nginx.wait()

    # -- nginx's callbacks --

    async def _serve_callbacks(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_post("/on_publish", self._on_publish)
        app.router.add_post("/on_publish_done", self._on_publish_done)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.media.callback_port).start()
        return runner

    async def _on_publish(self, request: web.Request) -> web.Response:
        form = await request.post()
        name = str(form.get("name") or "")
        if str(form.get("app") or "") != "live":
            self.refused += 1
            return web.Response(status=403, text="app: only live takes publishers")
        publish = await sync_to_async(publish_authorize)(name)
        if publish is None:
            self.refused += 1
            log.warning("ingest: a publish from %s with an unknown stream key refused", form.get("addr"))
            return web.Response(status=403, text="name: no stream has this key")
        self._publisher_came(publish, name)
        return web.Response(status=200, text="ok")

    async def _on_publish_done(self, request: web.Request) -> web.Response:
        form = await request.post()
        stream_id = self.names.get(str(form.get("name") or ""))
        live = self.streams.get(stream_id) if stream_id else None
        if live is not None and live.name == str(form.get("name")):
            self._publisher_left(live)
        return web.Response(status=200, text="ok")

    def _publisher_came(self, publish: Publish, name: str) -> None:
        live = self.streams.get(publish.stream_id)
        if live is None:
            live = LiveStream(publish.stream_id, publish.key, name, publish.record, publish.session_id)
            self.streams[publish.stream_id] = live
        else:
            # back within the grace period: the same session goes on
            if live.grace is not None:
                live.grace.cancel()
                live.grace = None
            self.names.pop(live.name, None)
            live.name, live.connected, live.session_id = name, True, publish.session_id
        self.names[name] = publish.stream_id
        log.info(
            "ingest: %s publishing (session %s%s)",
            live.key,
            live.session_id,
            ", continued" if publish.continued else "",
        )
        if live.transcoder is None or live.transcoder.done():
            live.transcoder = asyncio.create_task(self._transcode(live))

    def _publisher_left(self, live: LiveStream) -> None:
        if not live.connected:
            return
        live.connected = False
        _ask_transcoder_to_stop(live)
        if live.cut_off:
            asyncio.ensure_future(self._end(live, "cut off", force=True))
            return
        log.info("ingest: %s's publisher left; %.0f s to come back", live.key, self.grace_seconds)
        loop = asyncio.get_running_loop()
        live.grace = loop.call_later(
            self.grace_seconds, lambda: asyncio.ensure_future(self._end(live, "the publisher stopped"))
        )

    async def _end(self, live: LiveStream, reason: str, *, force: bool = False) -> None:
        """The stream goes offline, unless its publisher is back (or it ended already)."""
        if self.streams.get(live.stream_id) is not live or (live.connected and not force):
            return
        del self.streams[live.stream_id]
        self.names.pop(live.name, None)
        if live.grace is not None:
            live.grace.cancel()
        live.connected = False
        _ask_transcoder_to_stop(live)
        if live.transcoder is not None:
            await _transcoder_stopped(live)
        output = self.media.hls_dir / live.key
        recording = ""
        if live.record and output.exists():
            finish_recording(output)
            kept = (
                self.media.recordings_dir
                / live.key
                / time.strftime("%Y%m%d-%H%M%S", time.gmtime(live.started_at))
            )
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(output), str(kept))
            recording = str(kept.relative_to(self.media.directory))
        else:
            shutil.rmtree(output, ignore_errors=True)
        await sync_to_async(stream_went_offline)(stream_id=live.stream_id, reason=reason, recording=recording)
        log.info("ingest: %s offline (%s)", live.key, reason)

    # -- the ladder --

    async def _transcode(self, live: LiveStream) -> None:
        pause = RESTART_PAUSE_MIN
        output = self.media.hls_dir / live.key
        while live.connected:
            for rendition in RENDITIONS:
                (output / rendition).mkdir(parents=True, exist_ok=True)
            argv = ladder_command(
                self.ffmpeg,
                source_url=f"rtmp://127.0.0.1:{self.media.rtmp_port}/live/{live.name}",
                output=output,
                segment_seconds=self.media.segment_seconds,
                record=live.record,
            )
            log_file = (self.media.directory / "logs" / f"ffmpeg-{live.key}.log").open("ab")
            live.process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log_file,
                preexec_fn=functools.partial(die_with_parent, parent_pid=os.getpid()),
            )
            log_file.close()
            watcher = asyncio.create_task(self._until_playable(live, output))
            started = time.monotonic()
            code = await live.process.wait()
            watcher.cancel()
            if not live.connected:
                return
            live.restarts += 1
            if time.monotonic() - started > 30:
                pause = RESTART_PAUSE_MIN
            log.warning(
                "ingest: %s's transcoder exited (%s) with the publisher on; again in %.1f s",
                live.key,
                code,
                pause,
            )
            await asyncio.sleep(pause)
            pause = min(pause * 2, RESTART_PAUSE_MAX)

    async def _until_playable(self, live: LiveStream, output: Path) -> None:
        while not live.announced:
            if _playable(output):
                try:
                    await sync_to_async(stream_went_live)(
                        stream_id=live.stream_id, session_id=live.session_id
                    )
                except Exception:  # noqa: BLE001 - the database may be away: say it again soon
                    log.exception("ingest: %s plays but could not be marked live; trying again", live.key)
                    await asyncio.sleep(1.0)
                    continue
                live.announced = True
                log.info("ingest: %s is live", live.key)
                return
            await asyncio.sleep(PLAYABLE_POLL_SECONDS)

    # -- cut off from the admin --

    async def _read_drops(self, pubsub: Any) -> None:
        while True:
            try:
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        await self._cut_off(message["data"])
            except (redis.RedisError, OSError) as error:
                # A cut-off published meanwhile is lost (pub/sub); its key was rotated all
                # the same, so the publisher cannot come back once it leaves.
                log.warning("ingest: listening for cut-offs failed (%s); again in 1 s", error)
                await asyncio.sleep(1.0)
                with contextlib.suppress(redis.RedisError, OSError):
                    await pubsub.subscribe(DROP_CHANNEL)

    async def _cut_off(self, data: Any) -> None:
        try:
            stream_id = str(json.loads(data)["stream"])
        except (ValueError, KeyError, TypeError):
            return
        live = self.streams.get(stream_id)
        if live is None:
            return
        live.cut_off = True
        await self._drop_publisher(live.name)
        if not live.connected:
            await self._end(live, "cut off", force=True)

    async def _drop_publisher(self, name: str) -> None:
        url = f"http://127.0.0.1:{self.media.http_port}/control/drop/publisher"
        try:
            async with ClientSession(timeout=ClientTimeout(total=5)) as session:
                async with session.get(url, params={"app": "live", "name": name}) as response:
                    await response.read()
        except Exception:  # noqa: BLE001 - the publish_done that follows ends it anyway
            log.exception("ingest: dropping a publisher through nginx failed")


def _ask_transcoder_to_stop(live: LiveStream) -> None:
    """SIGTERM, once per ffmpeg. ffmpeg takes a second signal as "stop now" and interrupts
    its own writes: the playlists it writes as it ends would be left empty."""
    process = live.process
    if process is not None and process.returncode is None and live.signalled is not process:
        live.signalled = process
        process.terminate()


async def _transcoder_stopped(live: LiveStream) -> None:
    """Wait for the transcoder (asked to stop) to end; kill its ffmpeg after
    ``TRANSCODER_STOP_SECONDS``, so nothing writes into the directory once it is moved."""
    assert live.transcoder is not None
    try:
        await asyncio.wait_for(asyncio.shield(live.transcoder), TRANSCODER_STOP_SECONDS)
    except TimeoutError:
        process = live.process
        if process is not None and process.returncode is None:
            log.warning(
                "ingest: %s's transcoder did not stop within %.0f s; killed",
                live.key,
                TRANSCODER_STOP_SECONDS,
            )
            process.kill()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(live.transcoder, 5)
    except (asyncio.CancelledError, Exception):  # noqa: BLE001 - it ended, one way or another
        pass


def _playable(output: Path) -> bool:
    if not (output / "master.m3u8").exists():
        return False
    for rendition in RENDITIONS:
        playlist = output / rendition / "index.m3u8"
        try:
            if "#EXTINF" not in playlist.read_text():
                return False
        except OSError:
            return False
    return True
