# One image for web, worker and beat; docker-compose.yml chooses the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Debian's Mosquitto with its dynamic-security plugin: the platform's own MQTT broker
# (docker-compose.yml's mqtt service, manage.py mqtt_broker); nginx with the RTMP module and
# ffmpeg for live streams (manage.py stream_ingest, docs/streaming.md).
RUN apt-get update \
    && apt-get install -y --no-install-recommends mosquitto nginx libnginx-mod-rtmp ffmpeg \
    && rm -rf /var/lib/apt/lists/*

# Dependencies first, so that code changes do not reinstall them.
COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY . .

RUN useradd --create-home --uid 10001 app \
    && mkdir -p /app/var \
    && chown -R app:app /app/var
USER app

EXPOSE 8000
CMD ["python", "-m", "uvicorn", "project.asgi:application", "--host", "0.0.0.0", "--port", "8000", "--ws", "realtime.uvicorn_websocket:IdleLightWebSocketProtocol", "--ws-max-size", "1048576", "--ws-per-message-deflate", "false", "--lifespan", "off", "--no-access-log"]
