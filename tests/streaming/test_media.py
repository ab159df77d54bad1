"""What the ingest runs (streaming/services/media.py) and how its command refuses a host
without the programs: nginx's config keeps RTMP play to the transcoder on this host and
serves playlists uncached and segments cached; the ladder passes the source through and
encodes 480p and 360p with a keyframe every segment; a transcoder asked to stop (more
than once) still leaves whole playlists, and a kept ladder ends as a finished recording."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from project.processes.waiting import wait_until
from streaming.services.ingest import LiveStream, _ask_transcoder_to_stop
from streaming.services.media import RENDITIONS, MediaSettings, finish_recording, ladder_command, nginx_config

MEDIA = MediaSettings(
    directory=Path("/srv/streaming"),
    bind="127.0.0.1",
    rtmp_port=1935,
    http_port=8088,
    callback_port=8089,
    segment_seconds=1,
    rtmp_module="/usr/lib/nginx/modules/ngx_rtmp_module.so",
)


def test_nginx_asks_the_supervisor_before_a_publish_and_lets_only_this_host_play() -> None:
    config = nginx_config(MEDIA)
    assert "on_publish http://127.0.0.1:8089/on_publish;" in config
    assert "on_publish_done http://127.0.0.1:8089/on_publish_done;" in config
    assert "allow play 127.0.0.1;\n            deny play all;" in config
    assert "listen 127.0.0.1:1935;" in config and "listen 127.0.0.1:8088;" in config
    assert 'location ~ \\.m3u8$ {\n                add_header Cache-Control "no-cache" always;' in config
    assert 'add_header Cache-Control "public, max-age=86400" always;' in config
    assert "location ~ \\.tmp$ { return 404; }" in config  # what ffmpeg is still writing
    assert "rtmp_control all;" in config and "deny all;" in config


def test_the_ladder_copies_the_source_and_encodes_480p_and_360p_on_segment_keyframes() -> None:
    argv = ladder_command(
        "ffmpeg", source_url="rtmp://127.0.0.1:1935/live/sk_x", output=Path("/out/show"),
        segment_seconds=2, record=False,
    )  # fmt: skip
    joined = " ".join(argv)
    assert "-map 0:v:0 -c:v:0 copy" in joined
    assert "scale=-2:480" in joined and "scale=-2:360" in joined
    assert "-force_key_frames:v:1 expr:gte(t,n_forced*2)" in joined
    assert "-var_stream_map v:0,a:0,name:source v:1,a:1,name:480p v:2,a:2,name:360p" in joined
    assert "delete_segments" in joined and "-hls_list_size 6" in joined
    assert argv[-1] == "/out/show/%v/index.m3u8"


def test_a_recorded_stream_keeps_every_segment_in_an_event_playlist() -> None:
    argv = ladder_command(
        "ffmpeg", source_url="rtmp://h/live/k", output=Path("/out/s"), segment_seconds=1, record=True
    )
    joined = " ".join(argv)
    assert "delete_segments" not in joined and "-hls_playlist_type event" in joined
    assert "temp_file" in joined  # a playlist is renamed into place whole, never left half-written


def test_a_kept_ladder_is_finished_with_an_end_to_every_playlist_and_no_half_written_files(
    tmp_path: Path,
) -> None:
    for rendition in RENDITIONS:
        (tmp_path / rendition).mkdir()
    cut_short = "#EXTM3U\n#EXT-X-PLAYLIST-TYPE:EVENT\n#EXTINF:1.0,\nseg_1.ts\n"
    ended = cut_short + "#EXT-X-ENDLIST\n"
    (tmp_path / "source" / "index.m3u8").write_text(cut_short)
    (tmp_path / "480p" / "index.m3u8").write_text(ended)
    (tmp_path / "360p" / "seg_2.ts.tmp").write_bytes(b"half")
    finish_recording(tmp_path)
    assert (tmp_path / "source" / "index.m3u8").read_text() == ended
    assert (tmp_path / "480p" / "index.m3u8").read_text() == ended  # not ended twice
    assert not (tmp_path / "360p" / "seg_2.ts.tmp").exists()
    assert not (tmp_path / "360p" / "index.m3u8").exists()  # nothing made up where nothing was


def test_a_transcoder_asked_to_stop_twice_still_writes_whole_playlists_with_their_end(tmp_path: Path) -> None:
    # ffmpeg takes a second SIGTERM as "stop now" and interrupts its own reads and writes,
    # which left a recording's playlist empty (CI, tests/e2e/test_streaming_e2e.py): the
    # publisher left (one SIGTERM) while ffmpeg waited in a read of the RTMP, and the grace
    # period ended (another). The ingest asks once. Here ffmpeg waits in a read of a TCP source.
    clip = subprocess.run(
        [
            "ffmpeg", "-hide_banner", "-loglevel", "error",
            "-f", "lavfi", "-i", "testsrc=size=640x360:rate=30:duration=12",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=12",
            "-c:v", "libx264", "-preset", "ultrafast", "-g", "30", "-pix_fmt", "yuv420p", "-c:a", "aac",
            "-f", "mpegts", "pipe:1",
        ],
        capture_output=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    for rendition in RENDITIONS:
        (tmp_path / rendition).mkdir()

    async def run() -> None:
        connected: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()

        async def serve(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(clip)  # 12 s, past what ffmpeg probes; the connection stays open
            await writer.drain()
            await connected.put(writer)

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        argv = ladder_command(
            "ffmpeg", source_url=f"tcp://127.0.0.1:{port}", output=tmp_path, segment_seconds=1, record=True
        )
        live = LiveStream("id", "k", "sk", record=True, session_id=1)
        live.process = process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        source = await asyncio.wait_for(connected.get(), 30)
        playlist = tmp_path / "360p" / "index.m3u8"

        def waits_for_more() -> bool:  # through the clip, its main thread in poll() on the source
            listed = playlist.exists() and playlist.read_text().count("#EXTINF") >= 10
            return listed and "poll" in Path(f"/proc/{process.pid}/wchan").read_text()

        def took_its_signal() -> bool:  # SIGTERM no longer pending: its handler ran
            try:
                status = Path(f"/proc/{process.pid}/status").read_text().splitlines()
            except FileNotFoundError:
                return True  # it ended
            pending = (int(line.split()[1], 16) for line in status if line.startswith(("SigPnd:", "ShdPnd:")))
            return not any(mask & (1 << (signal.SIGTERM - 1)) for mask in pending)

        await asyncio.to_thread(wait_until, waits_for_more, 30, message="ffmpeg did not get through the clip")
        _ask_transcoder_to_stop(live)  # the publisher left
        await asyncio.to_thread(
            wait_until, took_its_signal, 10, message="ffmpeg never took the first SIGTERM"
        )
        _ask_transcoder_to_stop(live)  # the grace period ended (a second signal, were it sent)
        await asyncio.to_thread(
            wait_until, took_its_signal, 10, message="ffmpeg never took the second SIGTERM"
        )
        source.close()  # the read ends as the RTMP's would at its -rw_timeout
        await asyncio.wait_for(process.wait(), 20)
        server.close()

    asyncio.run(run())
    for rendition in RENDITIONS:
        text = (tmp_path / rendition / "index.m3u8").read_text()
        assert text.count("#EXTINF") >= 2 and text.rstrip().endswith("#EXT-X-ENDLIST"), rendition


def test_the_ingest_refuses_to_start_without_nginx_naming_the_setting(settings: object) -> None:
    settings.STREAMING_NGINX = "no-such-nginx-here"  # type: ignore[attr-defined]
    with pytest.raises(CommandError, match="STREAMING_NGINX: 'no-such-nginx-here' is not installed"):
        call_command("stream_ingest")
