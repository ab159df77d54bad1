"""What the ingest runs: nginx's config (RTMP in, HLS out) and the ffmpeg ladder per stream.

nginx (Debian's ``nginx`` with ``libnginx-mod-rtmp``) takes the publishers' RTMP on
``STREAMING_RTMP_PORT`` and asks the ingest supervisor (``on_publish``) whether the secret
key may publish; only 127.0.0.1 may play the RTMP (the transcoder). ffmpeg reads it back
and writes the ladder as HLS under ``STREAMING_DIR/hls/<public key>/``: the source passed
through, 480p and 360p, with a master playlist; nginx serves those files on
``STREAMING_HTTP_PORT`` (playlists never cached, segments cached for a day: a segment's
name is never reused while it lives).
"""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass
from pathlib import Path

RENDITIONS = ("source", "480p", "360p")
# (height, video bit rate, audio bit rate) of the transcoded renditions.
LADDER = {"480p": (480, "1400k", "128k"), "360p": (360, "800k", "96k")}


@dataclass(frozen=True)
class MediaSettings:
    directory: Path
    bind: str
    rtmp_port: int
    http_port: int
    callback_port: int
    segment_seconds: int
    rtmp_module: str

    @property
    def hls_dir(self) -> Path:
        return self.directory / "hls"

    @property
    def recordings_dir(self) -> Path:
        return self.directory / "recordings"


def nginx_config(media: MediaSettings) -> str:
    """nginx.conf for ``nginx -p <directory> -c nginx.conf`` in the foreground."""
    d = media.directory
    # As root, nginx's workers would become nobody, who may not read the project's tree.
    user = f"user {getpass.getuser()};\n" if os.geteuid() == 0 else ""
    callback = f"http://127.0.0.1:{media.callback_port}"
    return f"""# Written by manage.py stream_ingest (streaming/services/media.py); edits are lost.
{user}daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/logs/nginx-error.log warn;
load_module {media.rtmp_module};

events {{ worker_connections 4096; }}

rtmp {{
    server {{
        listen {media.bind}:{media.rtmp_port};
        chunk_size 4096;
        application live {{
            live on;
            record off;
            allow play 127.0.0.1;
            deny play all;
            notify_method post;
            on_publish {callback}/on_publish;
            on_publish_done {callback}/on_publish_done;
            drop_idle_publisher 10s;
        }}
    }}
}}

http {{
    access_log {d}/logs/nginx-access.log;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    sendfile on;
    tcp_nopush on;
    types {{
        application/vnd.apple.mpegurl m3u8;
        video/mp2t ts;
        video/mp4 mp4 m4s;
    }}
    default_type application/octet-stream;
    server {{
        listen {media.bind}:{media.http_port};
        root {d};
        location /hls/ {{
            add_header Access-Control-Allow-Origin * always;
            location ~ \\.tmp$ {{ return 404; }}
            location ~ \\.m3u8$ {{
                add_header Cache-Control "no-cache" always;
                add_header Access-Control-Allow-Origin * always;
            }}
            location ~ \\.(ts|m4s|mp4)$ {{
                add_header Cache-Control "public, max-age=86400" always;
                add_header Access-Control-Allow-Origin * always;
            }}
        }}
        location /control {{
            allow 127.0.0.1;
            deny all;
            rtmp_control all;
        }}
        location / {{ return 404; }}
    }}
}}
"""


def ladder_command(
    ffmpeg: str, *, source_url: str, output: Path, segment_seconds: int, record: bool, fps_hint: int = 30
) -> list[str]:
    """ffmpeg reading ``source_url`` and writing the ladder under ``output``: ``master.m3u8``
    and ``<rendition>/index.m3u8`` with its segments. The transcoded renditions get a
    keyframe every segment; the source is passed through as it comes (its keyframes set its
    segments). Audio is AAC from the publisher (what OBS and ffmpeg send over RTMP), copied."""
    gop = max(1, segment_seconds * fps_hint)
    filters = "[0:v]split=2[v1][v2];" + ";".join(
        f"[v{n}]scale=-2:{height}[v{n}out]" for n, (height, _, _) in enumerate(LADDER.values(), start=1)
    )
    argv = [ffmpeg, "-hide_banner", "-loglevel", "warning", "-nostdin", "-rw_timeout", "5000000"]
    argv += ["-i", source_url, "-filter_complex", filters]
    argv += ["-map", "0:v:0", "-c:v:0", "copy"]
    for n, (_, video_rate, _) in enumerate(LADDER.values(), start=1):
        # per output stream: a stream copied takes no encoder options
        argv += [
            "-map", f"[v{n}out]", f"-c:v:{n}", "libx264", f"-b:v:{n}", video_rate,
            f"-maxrate:v:{n}", video_rate, f"-bufsize:v:{n}", video_rate,
            f"-preset:v:{n}", "veryfast", f"-tune:v:{n}", "zerolatency", f"-profile:v:{n}", "main",
            f"-pix_fmt:v:{n}", "yuv420p", f"-g:v:{n}", str(gop), f"-keyint_min:v:{n}", str(gop),
            f"-sc_threshold:v:{n}", "0", f"-force_key_frames:v:{n}", f"expr:gte(t,n_forced*{segment_seconds})",
        ]  # fmt: skip
    for _ in RENDITIONS:
        argv += ["-map", "0:a:0"]
    argv += ["-c:a", "copy"]
    # temp_file: a segment is written under .tmp (which nginx does not serve) and renamed
    # when whole, so a player never gets half of one (ffmpeg writes playlists so anyway).
    flags = "independent_segments+program_date_time+temp_file" + ("" if record else "+delete_segments")
    argv += [
        "-f", "hls", "-hls_time", str(segment_seconds), "-hls_flags", flags,
        "-hls_list_size", "0" if record else "6",
        # numbers from the clock: a transcoder started again goes on where it left off
        "-hls_start_number_source", "epoch",
        "-hls_segment_filename", str(output / "%v" / "seg_%05d.ts"),
        "-master_pl_name", "master.m3u8",
        "-var_stream_map", " ".join(f"v:{n},a:{n},name:{name}" for n, name in enumerate(RENDITIONS)),
        str(output / "%v" / "index.m3u8"),
    ]  # fmt: skip
    if record:
        argv[argv.index("-hls_list_size")] = "-hls_playlist_type"
        argv[argv.index("-hls_playlist_type") + 1] = "event"
    return argv


def finish_recording(output: Path) -> None:
    """Make a kept ladder a finished recording: every rendition's playlist ends with
    ``#EXT-X-ENDLIST`` (ffmpeg writes it when it ends on its own; a transcoder that had to
    be killed did not), and what ffmpeg left half-written (``*.tmp``) goes."""
    for leftover in output.rglob("*.tmp"):
        leftover.unlink(missing_ok=True)
    for rendition in RENDITIONS:
        playlist = output / rendition / "index.m3u8"
        try:
            text = playlist.read_text()
        except OSError:
            continue
        if "#EXTINF" in text and "#EXT-X-ENDLIST" not in text:
            playlist.write_text(text.rstrip("\n") + "\n#EXT-X-ENDLIST\n")
