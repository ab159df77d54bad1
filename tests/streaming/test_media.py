"""What the ingest runs (streaming/services/media.py) and how its command refuses a host
without the programs: nginx's config keeps RTMP play to the transcoder on this host and
serves playlists uncached and segments cached; the ladder passes the source through and
encodes 480p and 360p with a keyframe every segment."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from streaming.services.media import MediaSettings, ladder_command, nginx_config

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


def test_the_ingest_refuses_to_start_without_nginx_naming_the_setting(settings: object) -> None:
    settings.STREAMING_NGINX = "no-such-nginx-here"  # type: ignore[attr-defined]
    with pytest.raises(CommandError, match="STREAMING_NGINX: 'no-such-nginx-here' is not installed"):
        call_command("stream_ingest")
