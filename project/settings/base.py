"""Settings shared by every environment, read from the environment with strict helpers.

Defaults run against PostgreSQL and Redis on 127.0.0.1, as `make run` provides them.
"""

from __future__ import annotations

from pathlib import Path

from project.settings.env import (
    env_bool,
    env_choice,
    env_database,
    env_float,
    env_int,
    env_list,
    env_redis_url,
    env_str,
)
from project.settings.providers import build_providers

BASE_DIR = Path(__file__).resolve().parent.parent.parent

SECRET_KEY = env_str("SECRET_KEY", "dev-insecure-change-me-0123456789abcdefghijklmnopqrstuvwxyz")
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]", "testserver"])
PORT = env_int("PORT", 8000, minimum=1)
# The public address of this deployment, used in links and in Origin checks for cookie sockets.
PUBLIC_URL = env_str("PUBLIC_URL", f"http://127.0.0.1:{PORT}")
# Origins whose pages may open a socket with the session cookie. Token sockets need no Origin.
SOCKET_ALLOWED_ORIGINS = env_list(
    "SOCKET_ALLOWED_ORIGINS",
    [PUBLIC_URL, f"http://localhost:{PORT}", f"http://127.0.0.1:{PORT}"],
)

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "channels",
    "anymail",
    "notifications",
    "presence",
    "realtime",
    "collaboration",
    "streaming",
    "iot",
    "gaming",
    # Development and test tooling: `manage.py provider_sandbox` (project.settings.production
    # leaves it out). No app imports it.
    "sandbox",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # CORS for the embeddable inbox's API and SSE paths only (notifications/embed.py).
    "notifications.embed.EmbedCorsMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"
ASGI_APPLICATION = "project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": {
        **env_database("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/notifications"),
        # A connection pool per process. Under ASGI every request's sync code runs in a new
        # thread, and persistent per-thread connections (CONN_MAX_AGE) pile up until the
        # server refuses clients; a bounded pool is Django's answer for ASGI.
        "CONN_MAX_AGE": 0,
        "CONN_HEALTH_CHECKS": False,
        "OPTIONS": {
            "connect_timeout": env_int("DB_CONNECT_TIMEOUT", 5, minimum=1),
            # Parameters travel apart from the statement, arrays in binary (psycopg's
            # client-side binding quoted every element of a fan-out page's arrays into the
            # SQL text), and statements run often are prepared once per connection.
            "server_side_binding": env_bool("DB_SERVER_SIDE_BINDING", True),
            # No JIT compilation: it pays off on long analytical queries only. Statements that
            # turn sequential scans off (notifications/services/sql.py) carry plans whose
            # cost passes the JIT threshold: compiling one update of 1,000 deliveries took
            # 144 ms in a test, where running it took 2.
            "options": env_str("DB_OPTIONS", "-c jit=off"),
            "pool": {
                "min_size": env_int("DB_POOL_MIN", 1, minimum=0),
                "max_size": env_int("DB_POOL_MAX", 8, minimum=1),
                "timeout": env_float("DB_POOL_TIMEOUT", 10.0),
            },
        },
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_redis_url("REDIS_URL", "redis://127.0.0.1:6379/0")
# Prefix of every Redis key and channel-layer channel of this deployment, so that several
# deployments (or parallel test runs) can share one Redis without hearing each other.
REDIS_NAMESPACE = env_str("REDIS_NAMESPACE", "")

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": f"{REDIS_NAMESPACE}cache",
        "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 2},
    }
}

CHANNEL_LAYERS = {
    "default": {
        # The pub/sub layer: ~93k deliveries/s to groups versus a few hundred group_send/s for
        # the list-based layer, measured on a 2-core machine. It is at-most-once and unbounded,
        # so each connection bounds its own queue (services/live_inbox.py) and clients resume
        # from the database by sequence number.
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL], "prefix": f"{REDIS_NAMESPACE}rt"},
    }
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/inbox/"

LANGUAGE_CODE = "en"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "var" / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True

DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("MAX_REQUEST_BYTES", 1_048_576, minimum=1024)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["notifications.api.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["notifications.api.auth.IsService"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "notifications.api.errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Notification platform API",
    "DESCRIPTION": "Events in, deliveries out: the platform's public contract (v1).",
    "VERSION": "1.0.0",
    # OpenAPI 3.1 (JSON Schema 2020-12), as /api/schema/ serves it (project/urls.py).
    "OAS_VERSION": "3.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Swagger UI served from our own static files: no CDN, works offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Several serializers offer the channel choices; one enum in the schema.
    "ENUM_NAME_OVERRIDES": {"ChannelEnum": "notifications.models.Channel"},
}

# --- Celery: at-least-once (docs/architecture.md) -------------------------------------------
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL)
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_VISIBILITY_TIMEOUT = env_int("CELERY_VISIBILITY_TIMEOUT", 3600, minimum=60)
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": CELERY_BROKER_VISIBILITY_TIMEOUT,
    "socket_connect_timeout": 2,
    "socket_timeout": 5,
    # A publisher that finds the broker down fails within a second instead of kombu's
    # default ~6 s of reconnect attempts: the API answers at once and the outbox sweep
    # enqueues later. Workers keep reconnecting on their own (broker_connection_retry).
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}
# Time limits well under the visibility timeout, so a task never runs twice concurrently
# because the broker thought it was lost.
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 300, minimum=10)
CELERY_TASK_SOFT_TIME_LIMIT = CELERY_TASK_TIME_LIMIT - 5
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT = env_float("CELERY_SOFT_SHUTDOWN_TIMEOUT", 10.0)
CELERY_WORKER_ENABLE_SOFT_SHUTDOWN_ON_IDLE = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# The API enqueues on commit; when the broker is down it must not hang the request: the
# outbox sweep enqueues later.
CELERY_TASK_PUBLISH_RETRY = False
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {
    "notifications.tasks.event_fanout_task": {"queue": "fanout"},
    "notifications.tasks.events_fanout_many_task": {"queue": "fanout"},
    "notifications.tasks.inapp_dispatch_task": {"queue": "inapp"},
    # Provider sends are routed per channel at enqueue time (queues email, sms, push,
    # webhook), so a slow provider of one channel never delays another.
    "notifications.tasks.*_sweep_task": {"queue": "periodic"},
    "presence.tasks.*": {"queue": "periodic"},
    "collaboration.tasks.*": {"queue": "periodic"},
    "iot.tasks.*": {"queue": "periodic"},
    "gaming.tasks.*": {"queue": "periodic"},
}
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Celery's Django fixup closes the database connection before and after every task, and in
# a prefork pool process the whole connection pool with it, unless this is set: every task
# then paid for a new pool, a new PostgreSQL backend and its TLS-less handshake (a third of
# a one-recipient fan-out's time, docs/benchmarks.md). With it, the fixup closes them only
# every DB_REUSE_MAX tasks, and project/celery.py hands the connection back to the pool
# after each task (a broken one is discarded by the pool there).
CELERY_DB_REUSE_MAX = env_int("CELERY_DB_REUSE_MAX", 1000, minimum=1)
CELERY_TIMEZONE = "UTC"

# --- Celery on RabbitMQ (CELERY_BROKER_URL=amqp://user:password@host:5672/vhost) ----------
# The queues every worker, web process and beat must agree on (docs/architecture.md).
WORK_QUEUES = ("fanout", "inapp", "periodic", "default", "email", "sms", "push", "webhook", "campaign")
_broker_scheme = CELERY_BROKER_URL.partition("://")[0]
if _broker_scheme not in {"redis", "rediss", "redis+socket", "sentinel", "amqp", "amqps", "pyamqp"}:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(
        f"CELERY_BROKER_URL must be a redis:// or amqp:// URL, got scheme {_broker_scheme!r}"
    )
if _broker_scheme in {"amqp", "amqps", "pyamqp"}:
    from kombu import Exchange, Queue

    # Quorum queues: durable and replicated by Raft across the RabbitMQ cluster. Their
    # exchanges are topic exchanges because Celery's native delayed delivery (how a
    # countdown retry waits on quorum queues: in broker-side TTL queues, not held by a
    # worker) cannot route back through direct exchanges. Celery sees the quorum queues
    # and switches to per-consumer prefetch (quorum queues refuse global QoS) and, in each
    # worker, declares the delay exchanges and binds these queues to them.
    CELERY_TASK_QUEUES = tuple(
        Queue(
            name,
            Exchange(name, type="topic", durable=True),
            routing_key=name,
            durable=True,
            queue_arguments={"x-queue-type": "quorum"},
        )
        for name in WORK_QUEUES
    )
    CELERY_TASK_DEFAULT_EXCHANGE_TYPE = "topic"
    # A queue added later (a worker started with -Q campaign) is a quorum queue too.
    CELERY_TASK_CREATE_MISSING_QUEUE_TYPE = "quorum"
    CELERY_TASK_CREATE_MISSING_QUEUE_EXCHANGE_TYPE = "topic"
    CELERY_BROKER_NATIVE_DELAYED_DELIVERY_QUEUE_TYPE = "quorum"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # Publisher confirms: a task counts as enqueued once the broker has stored it (on
        # a quorum of replicas), and a refused publish raises instead of vanishing, so the
        # outbox and batch sweeps pick it up again.
        "confirm_publish": True,
        # As with Redis: a publisher that finds the broker down gives up at once.
        "max_retries": 1,
        "interval_start": 0,
        "interval_step": 0.2,
        "interval_max": 0.5,
    }

# --- Pipeline tuning ----------------------------------------------------------------------
# Recipients planned per transaction during fan-out (keyset page size).
FANOUT_PAGE_SIZE = env_int("FANOUT_PAGE_SIZE", 2000, minimum=1)
# A fan-out task works this long, then re-enqueues itself so one big audience never holds
# a worker past its time limit and smaller events interleave.
FANOUT_SLICE_SECONDS = env_float("FANOUT_SLICE_SECONDS", 20.0)
# An outbox row whose task has not reported progress for this long is enqueued again by the
# sweep (the task was lost: broker flushed, worker killed).
OUTBOX_LEASE_SECONDS = env_int("OUTBOX_LEASE_SECONDS", 60, minimum=1)
# Pending deliveries older than this with nobody working on them are dispatched again.
DELIVERY_STALE_SECONDS = env_int("DELIVERY_STALE_SECONDS", 120, minimum=1)
SWEEP_INTERVAL_SECONDS = env_float("SWEEP_INTERVAL_SECONDS", 5.0)
# Small events (one page of explicit recipients) fanned out together by one task: the
# events of a bulk request, in tasks of at most this many (notifications/services/fanout.py).
FANOUT_MANY_MAX = env_int("FANOUT_MANY_MAX", 500, minimum=1)
# A web process fans out the events it accepted itself, right after its commit, on a thread
# of its own (notifications/services/fanout_nearby.py); with more than
# FANOUT_NEARBY_BACKLOG events waiting there, the rest go to the fan-out queue.
FANOUT_NEARBY = env_bool("FANOUT_NEARBY", True)
FANOUT_NEARBY_BACKLOG = env_int("FANOUT_NEARBY_BACKLOG", 2000, minimum=1)
# Fan-out pages with at most this many in-app deliveries write their inbox items in the
# page's own transaction; larger ones hand their in-app recipients to the in-app queue,
# whose workers insert the rows and items (0: always the queue; services/deliveries.py).
INAPP_INLINE_MAX = env_int("INAPP_INLINE_MAX", 50, minimum=0)
# API keys and notification types are cached per process and dropped when a change is
# published through Redis (notifications/services/lookups.py); an entry lives at most this long.
LOOKUP_CACHE_SECONDS = env_float("LOOKUP_CACHE_SECONDS", 60.0)
# Per-user per-channel caps: "count/seconds". Critical types are not capped.
RATE_CAPS = {
    "inapp": env_str("RATE_CAP_INAPP", "600/60"),
    "email": env_str("RATE_CAP_EMAIL", "20/3600"),
    "sms": env_str("RATE_CAP_SMS", "10/3600"),
    "push": env_str("RATE_CAP_PUSH", "60/3600"),
    "webhook": env_str("RATE_CAP_WEBHOOK", "600/60"),
}
# Marketing messages per recipient, whatever their channels: "count/seconds" caps, comma
# separated (1 a day, 5 a week); a recipient over one is not sent the next marketing message.
MARKETING_CAPS = env_str("MARKETING_CAPS", "1/86400,5/604800")
END_USER_TOKEN_TTL_SECONDS = env_int("END_USER_TOKEN_TTL_SECONDS", 3600, minimum=60)
# Frames a slow socket may have waiting before it is cut off (it then resumes by seq).
SOCKET_SEND_QUEUE_LIMIT = env_int("SOCKET_SEND_QUEUE_LIMIT", 256, minimum=1)
SOCKET_SEND_TIMEOUT_SECONDS = env_float("SOCKET_SEND_TIMEOUT_SECONDS", 10.0)
# The web process freezes its long-lived objects this often so that garbage collections
# skip them, and collects everything this often (realtime/gc_pauses.py); 0 turns it off.
REALTIME_GC_FREEZE_SECONDS = env_float("REALTIME_GC_FREEZE_SECONDS", 5.0)
REALTIME_GC_FULL_SECONDS = env_float("REALTIME_GC_FULL_SECONDS", 3600.0)
SSE_KEEPALIVE_SECONDS = env_float("SSE_KEEPALIVE_SECONDS", 15.0)
# Origins whose pages may call the end-user inbox API and SSE stream with a token
# (notifications/embed.py); "*" for any. Never with cookies.
INBOX_EMBED_ORIGINS = env_list("INBOX_EMBED_ORIGINS", ["*"])
# A typing indicator clears itself this long after the typer's last "typing" frame.
TYPING_SECONDS = env_float("TYPING_SECONDS", 5.0)
# Rooms one socket may watch for typing indicators.
TYPING_WATCH_MAX = env_int("TYPING_WATCH_MAX", 50, minimum=1)
# How long GET /api/v1/inbox/poll/ holds a request that has nothing to answer yet.
INBOX_POLL_SECONDS = env_float("INBOX_POLL_SECONDS", 25.0)
# A new inbox socket holds live items until its client's first frame (a resume comes first)
# or this long (notifications/consumers.py).
INBOX_RESUME_WAIT_SECONDS = env_float("INBOX_RESUME_WAIT_SECONDS", 1.0)
# How often snoozed inbox items whose time has come are brought back (beat).
INBOX_SNOOZE_WAKE_SECONDS = env_float("INBOX_SNOOZE_WAKE_SECONDS", 5.0)
# Presence (presence/services.py): after a user's last connection closes cleanly it still
# counts this long, so a page reload does not flap them offline (offline within 15 s).
PRESENCE_GRACE_SECONDS = env_float("PRESENCE_GRACE_SECONDS", 10.0)
# How often the last-seen moments kept in Redis are written to the database.
PRESENCE_FLUSH_SECONDS = env_float("PRESENCE_FLUSH_SECONDS", 60.0)
# How often presence looks for changes nobody caused (a grace or a heartbeat running out);
# with the 10 s grace, a closed tab's user is announced offline within 15 s.
PRESENCE_SWEEP_SECONDS = env_float("PRESENCE_SWEEP_SECONDS", 2.0)
# Status changes a watching socket gathers before it sends them as one frame.
PRESENCE_BATCH_SECONDS = env_float("PRESENCE_BATCH_SECONDS", 0.25)
# Recipients one socket may watch at once.
PRESENCE_WATCH_MAX = env_int("PRESENCE_WATCH_MAX", 500, minimum=1)
# Collaborative documents (collaboration/services/updates.py): the largest single update a
# client may send, and the most a document may hold (its snapshot and the updates not yet
# merged into it); either refused with a close reason naming the limit.
COLLAB_UPDATE_MAX_BYTES = env_int("COLLAB_UPDATE_MAX_BYTES", 1_048_576, minimum=1024)
COLLAB_DOCUMENT_MAX_BYTES = env_int("COLLAB_DOCUMENT_MAX_BYTES", 16_777_216, minimum=4096)
# Updates stored since the last compaction that make the next one due.
COLLAB_COMPACT_AFTER_UPDATES = env_int("COLLAB_COMPACT_AFTER_UPDATES", 500, minimum=1)
# Automatic versions (collaboration/services/versions.py): one per edited document at most
# this often, the latest COLLAB_AUTO_VERSIONS_KEPT kept (named versions are all kept).
COLLAB_AUTO_VERSION_SECONDS = env_float("COLLAB_AUTO_VERSION_SECONDS", 600.0)
COLLAB_AUTO_VERSIONS_KEPT = env_int("COLLAB_AUTO_VERSIONS_KEPT", 50, minimum=1)
# A socket's awareness states (cursors, names) the server forgets when the client has not
# renewed them for this long (y-protocols clients renew every 15 s; its own timeout is 30 s).
COLLAB_AWARENESS_TIMEOUT_SECONDS = env_float("COLLAB_AWARENESS_TIMEOUT_SECONDS", 30.0)
# The entries a document's Redis stream keeps for the web processes reading it
# (collaboration/services/relay.py), and the messages a document socket may have waiting
# before it is closed as too slow (its client reconnects and syncs).
COLLAB_STREAM_MAXLEN = env_int("COLLAB_STREAM_MAXLEN", 10_000, minimum=100)
COLLAB_SOCKET_QUEUE_MAX = env_int("COLLAB_SOCKET_QUEUE_MAX", 2_000, minimum=10)
# IoT (iot/): the platform's own Mosquitto (iot/services/broker.py), started by make run on
# MQTT_PORT beside any broker the machine runs (1883 is usually that one), its files under
# MQTT_DIR; devices are told MQTT_PUBLIC_HOST/PORT when they sit behind a name or a proxy.
MQTT_HOST = env_str("MQTT_HOST", "127.0.0.1")
MQTT_PORT = env_int("MQTT_PORT", 1884, minimum=1)
# The address the broker listens on (0.0.0.0 in a container that others reach).
MQTT_BIND = env_str("MQTT_BIND", "127.0.0.1")
MQTT_PUBLIC_HOST = env_str("MQTT_PUBLIC_HOST", "")
MQTT_PUBLIC_PORT = env_int("MQTT_PUBLIC_PORT", 0, minimum=0)
MQTT_DIR = Path(env_str("MQTT_DIR", str(BASE_DIR / "var" / "mqtt")))
# Ingestion (iot/services/ingest.py): a batch is written when it holds IOT_BATCH_MAX readings
# or its oldest has waited IOT_BATCH_SECONDS.
IOT_BATCH_MAX = env_int("IOT_BATCH_MAX", 5_000, minimum=1)
IOT_BATCH_SECONDS = env_float("IOT_BATCH_SECONDS", 0.1)
# A reading stamped further ahead than this is refused as malformed (clock gone wrong).
IOT_FUTURE_SECONDS = env_float("IOT_FUTURE_SECONDS", 300.0)
# Malformed payloads kept per device for staff to look at (the newest; the count goes on).
IOT_QUARANTINE_PER_DEVICE = env_int("IOT_QUARANTINE_PER_DEVICE", 50, minimum=1)
# Retention, by dropping whole partitions (iot/services/partitions.py): raw readings by the
# day, minute rollups by the month; hourly rollups are kept for good.
IOT_RAW_RETENTION_DAYS = env_int("IOT_RAW_RETENTION_DAYS", 7, minimum=1)
IOT_MINUTE_RETENTION_DAYS = env_int("IOT_MINUTE_RETENTION_DAYS", 90, minimum=1)
# An alert that closes and opens again within this long is one alert (iot/services/alerts.py).
IOT_ALERT_FLAP_SECONDS = env_float("IOT_ALERT_FLAP_SECONDS", 300.0)
# A command the device has not acknowledged within this long is marked timed out.
IOT_COMMAND_TIMEOUT_SECONDS = env_float("IOT_COMMAND_TIMEOUT_SECONDS", 30.0)
# make run's demo devices publishing (manage.py iot_simulate, started by run_platform as
# its iot-demo process; seed_demo_iot makes them). Off in production.
IOT_DEMO_DEVICES = env_bool("IOT_DEMO_DEVICES", True)

# --- Gaming (gaming/) ---------------------------------------------------------------------------
# The regions match servers run in; a ticket may carry its round trip to each, and a match
# is placed where its worst-off player is best off (gaming/services/matchmaking.py).
GAMING_REGIONS = env_list("GAMING_REGIONS", ["local"])
# A match fills up to its mode's most players; after this long its oldest ticket takes
# what is there (at least the mode's fewest).
GAMING_FILL_SECONDS = env_float("GAMING_FILL_SECONDS", 5.0)
# The rating window (OpenSkill ordinal points) a ticket accepts at first, how fast it
# widens per second of waiting, and how wide it gets.
GAMING_WINDOW_BASE = env_float("GAMING_WINDOW_BASE", 3.0)
GAMING_WINDOW_PER_SECOND = env_float("GAMING_WINDOW_PER_SECOND", 1.0)
GAMING_WINDOW_MAX = env_float("GAMING_WINDOW_MAX", 60.0)
# How long an arena round lasts (gaming/modes/arena.py).
GAMING_ARENA_ROUND_SECONDS = env_float("GAMING_ARENA_ROUND_SECONDS", 120.0)
# A player whose socket closed may come back within this long; then they forfeit.
GAMING_GRACE_SECONDS = env_float("GAMING_GRACE_SECONDS", 20.0)
# The scheduling priority match servers run at (-20 first, 19 last; below 0 needs root): on
# a host shared with web processes, ticks on time come before sockets served at once.
GAMING_SERVER_NICE = env_int("GAMING_SERVER_NICE", 0, minimum=-20, maximum=19)
# Real-time scheduling for match servers (Linux SCHED_FIFO at this priority, 1-99; 0: the
# normal scheduler; needs root or CAP_SYS_NICE): a clock that comes due takes a core from
# web processes at once instead of waiting for its turn. The kernel keeps 5% of each
# second for everything else (kernel.sched_rt_runtime_us).
GAMING_SERVER_REALTIME = env_int("GAMING_SERVER_REALTIME", 0, minimum=0, maximum=99)
# State also travels over an unreliable, unordered WebRTC data channel when the browser
# asks for one on the match socket (gaming/services/rtc.py); off, the socket carries it all.
GAMING_RTC = env_bool("GAMING_RTC", True)
# STUN/TURN servers the web process and the browser gather candidates with (a server
# behind NAT needs one); empty on a LAN or a host with a public address.
GAMING_RTC_ICE_SERVERS = env_list("GAMING_RTC_ICE_SERVERS", [])
# How many data channels one web process holds at most; past it, the socket carries state.
GAMING_RTC_MAX_CHANNELS = env_int("GAMING_RTC_MAX_CHANNELS", 500, minimum=0)

# --- Live streaming (streaming/; docs/streaming.md) ------------------------------------------
# nginx with the RTMP module takes publishers on STREAMING_RTMP_PORT and serves the HLS
# files on STREAMING_HTTP_PORT; its config, the HLS output and logs live under STREAMING_DIR.
STREAMING_DIR = Path(env_str("STREAMING_DIR", str(BASE_DIR / "var" / "streaming")))
STREAMING_BIND = env_str("STREAMING_BIND", "127.0.0.1")
STREAMING_RTMP_PORT = env_int("STREAMING_RTMP_PORT", 1935, minimum=1)
STREAMING_HTTP_PORT = env_int("STREAMING_HTTP_PORT", 8088, minimum=1)
# nginx-rtmp asks the ingest supervisor (manage.py stream_ingest) here whether a publish
# may go on (on_publish) and tells it when a publisher leaves (on_publish_done).
STREAMING_CALLBACK_PORT = env_int("STREAMING_CALLBACK_PORT", 8089, minimum=1)
# What publishers and viewers are told (empty: http(s)/rtmp on STREAMING_BIND's ports).
STREAMING_PUBLIC_RTMP_URL = env_str("STREAMING_PUBLIC_RTMP_URL", "")
STREAMING_PUBLIC_HLS_URL = env_str("STREAMING_PUBLIC_HLS_URL", "")
# A publisher who drops and comes back within this long continues the same stream.
STREAMING_GRACE_SECONDS = env_float("STREAMING_GRACE_SECONDS", 10.0)
# HLS segment length of the ladder (seconds; the source's keyframes decide the passthrough's).
STREAMING_SEGMENT_SECONDS = env_int("STREAMING_SEGMENT_SECONDS", 1, minimum=1, maximum=10)
STREAMING_NGINX = env_str("STREAMING_NGINX", "nginx")
STREAMING_FFMPEG = env_str("STREAMING_FFMPEG", "ffmpeg")
STREAMING_RTMP_MODULE = env_str("STREAMING_RTMP_MODULE", "/usr/lib/nginx/modules/ngx_rtmp_module.so")

# Stream chat (streaming/services/chat.py): at most COUNT messages per SECONDS per viewer and
# stream ("3/2"; "off" for none), over a sliding window; the owner and moderators are exempt.
STREAMING_CHAT_RATE = env_str("STREAMING_CHAT_RATE", "3/2")
# A stream's viewer count is announced to its chat at most this often (changes in between
# are coalesced into the next announcement).
STREAMING_CHAT_VIEWERS_EVERY_SECONDS = env_float("STREAMING_CHAT_VIEWERS_EVERY_SECONDS", 1.0)

MAX_EXPLICIT_RECIPIENTS = env_int("MAX_EXPLICIT_RECIPIENTS", 10_000, minimum=1)
MAX_EVENT_DATA_BYTES = env_int("MAX_EVENT_DATA_BYTES", 65_536, minimum=256)

# --- Logging: structured JSON lines carrying event and delivery ids -------------------------
LOG_LEVEL = env_choice("LOG_LEVEL", "INFO", {"DEBUG", "INFO", "WARNING", "ERROR"})
LOG_FORMAT = env_choice("LOG_FORMAT", "json", {"json", "text"})
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {"()": "project.logging.JsonFormatter"},
        "text": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        "celery": {"level": LOG_LEVEL},
        # One line per task succeeded is noise at 20,000 deliveries/s; failures still log.
        "celery.app.trace": {
            "level": env_choice("CELERY_TASK_LOG_LEVEL", "WARNING", {"INFO", "WARNING", "ERROR"})
        },
        "daphne": {"level": "WARNING"},
        "uvicorn.access": {"level": "WARNING"},
    },
}
# `manage.py run_platform` (make run) writes one log file per process it starts in the
# first, and keeps its lock (one per database) in the second.
PLATFORM_LOG_DIR = Path(env_str("PLATFORM_LOG_DIR", str(BASE_DIR / "var" / "log")))
PLATFORM_RUN_DIR = Path(env_str("PLATFORM_RUN_DIR", str(BASE_DIR / "var" / "run")))
QUIET_HOURS_CHANNELS = env_list("QUIET_HOURS_CHANNELS", ["inapp", "email", "sms", "push", "webhook"])

# Providers read from their event log (``"receipts": "events"``): how often the beat polls,
# how long one poll may keep reading pages, and how far back a first poll starts.
RECEIPTS_POLL_SECONDS = env_float("RECEIPTS_POLL_SECONDS", 1.0)
RECEIPTS_POLL_BUDGET_SECONDS = env_float("RECEIPTS_POLL_BUDGET_SECONDS", 20.0)
RECEIPTS_POLL_LOOKBACK_SECONDS = env_int("RECEIPTS_POLL_LOOKBACK_SECONDS", 3 * 86400, minimum=1)

CELERY_BEAT_SCHEDULE = {
    "outbox-sweep": {
        "task": "notifications.tasks.outbox_sweep_task",
        "schedule": SWEEP_INTERVAL_SECONDS,
        # A sweep that waited longer than its interval is superseded by the next one.
        "options": {"queue": "periodic", "expires": SWEEP_INTERVAL_SECONDS * 2},
    },
    "deliveries-sweep": {
        "task": "notifications.tasks.deliveries_sweep_task",
        "schedule": SWEEP_INTERVAL_SECONDS,
        "options": {"queue": "periodic", "expires": SWEEP_INTERVAL_SECONDS * 2},
    },
    # Recurring reminders whose next occurrence came due (notifications/services/reminders.py).
    "reminders-sweep": {
        "task": "notifications.tasks.reminders_sweep_task",
        "schedule": SWEEP_INTERVAL_SECONDS,
        "options": {"queue": "periodic", "expires": SWEEP_INTERVAL_SECONDS * 2},
    },
    # Daily and weekly digests that came due (notifications/services/digests.py).
    "digests-sweep": {
        "task": "notifications.tasks.digests_sweep_task",
        "schedule": SWEEP_INTERVAL_SECONDS,
        "options": {"queue": "periodic", "expires": SWEEP_INTERVAL_SECONDS * 2},
    },
    # Receipts of the providers read from their event log (notifications/services/
    # receipts_poll.py), on the campaign worker: that is bulk mail's traffic.
    "receipts-poll": {
        "task": "notifications.tasks.receipts_poll_task",
        "schedule": RECEIPTS_POLL_SECONDS,
        "options": {"queue": "campaign", "expires": RECEIPTS_POLL_SECONDS * 2},
    },
    "inbox-snooze-sweep": {
        "task": "notifications.tasks.inbox_snooze_sweep_task",
        "schedule": INBOX_SNOOZE_WAKE_SECONDS,
        "options": {"queue": "periodic", "expires": INBOX_SNOOZE_WAKE_SECONDS * 2},
    },
    "presence-sweep": {
        "task": "presence.tasks.presence_sweep_task",
        "schedule": PRESENCE_SWEEP_SECONDS,
        "options": {"queue": "periodic", "expires": PRESENCE_SWEEP_SECONDS * 2},
    },
    "presence-last-seen-flush": {
        "task": "presence.tasks.last_seen_flush_task",
        "schedule": PRESENCE_FLUSH_SECONDS,
        "options": {"queue": "periodic", "expires": PRESENCE_FLUSH_SECONDS * 2},
    },
    "collaboration-auto-versions": {
        "task": "collaboration.tasks.versions_auto_task",
        "schedule": min(COLLAB_AUTO_VERSION_SECONDS, 300.0),
        "options": {"queue": "periodic", "expires": min(COLLAB_AUTO_VERSION_SECONDS, 300.0) * 2},
    },
    # IoT (iot/tasks.py): commands not answered in time, rollouts' silent devices and lost
    # offers, the time series' partitions, and no-data rules (the ingest sweeps those every
    # second itself; this covers a platform whose ingest is down).
    "iot-commands-time-out": {
        "task": "iot.tasks.commands_time_out_task",
        "schedule": 5.0,
        "options": {"queue": "periodic", "expires": 10.0},
    },
    "iot-rollouts-check": {
        "task": "iot.tasks.rollouts_check_task",
        "schedule": 60.0,
        "options": {"queue": "periodic", "expires": 120.0},
    },
    "iot-partitions": {
        "task": "iot.tasks.partitions_task",
        "schedule": 3600.0,
        "options": {"queue": "periodic", "expires": 1800.0},
    },
    "iot-no-data-sweep": {
        "task": "iot.tasks.no_data_sweep_task",
        "schedule": 10.0,
        "options": {"queue": "periodic", "expires": 20.0},
    },
    # Gaming (gaming/tasks.py): a matchmaking pass over the searching tickets; matches whose
    # match server stopped beating end as aborted.
    "gaming-matchmaking": {
        "task": "gaming.tasks.matchmaking_task",
        "schedule": 1.0,
        "options": {"queue": "periodic", "expires": 2.0},
    },
    "gaming-orphans": {
        "task": "gaming.tasks.orphans_task",
        "schedule": 2.0,
        "options": {"queue": "periodic", "expires": 4.0},
    },
}

# --- Providers (issue 3) -------------------------------------------------------------------
# Every provider is reached through its real client library. Without real credentials the
# clients point at the provider sandbox (`manage.py provider_sandbox`, started by make run),
# which speaks each provider's wire protocol; setting a provider's credentials in the
# environment (MAILGUN_API_KEY, TWILIO_ACCOUNT_SID, FCM_SERVICE_ACCOUNT_FILE, APNS_KEY_FILE)
# points that provider at the real service instead.
PROVIDER_SANDBOX_HOST = env_str("PROVIDER_SANDBOX_HOST", "127.0.0.1")
PROVIDER_SANDBOX_HTTP_PORT = env_int("PROVIDER_SANDBOX_HTTP_PORT", 8100, minimum=1)
PROVIDER_SANDBOX_APNS_PORT = env_int("PROVIDER_SANDBOX_APNS_PORT", 8101, minimum=1)
PROVIDER_SANDBOX_SMTP_PORT = env_int("PROVIDER_SANDBOX_SMTP_PORT", 8102, minimum=1)
# Keys and certificates the sandbox generates and the transports use (FCM service account,
# APNs ES256 key, the TLS CA of the sandbox's APNs endpoint).
PROVIDER_SANDBOX_DIR = Path(env_str("PROVIDER_SANDBOX_DIR", str(BASE_DIR / "var" / "sandbox")))
PROVIDERS = build_providers(
    sandbox_host=PROVIDER_SANDBOX_HOST,
    http_port=PROVIDER_SANDBOX_HTTP_PORT,
    apns_port=PROVIDER_SANDBOX_APNS_PORT,
    smtp_port=PROVIDER_SANDBOX_SMTP_PORT,
    sandbox_dir=PROVIDER_SANDBOX_DIR,
)
# Providers of each channel in failover order. Push is chosen by the device's platform.
CHANNEL_PROVIDERS = {
    "email": env_list("EMAIL_PROVIDERS", ["mailgun", "smtp"]),
    "sms": env_list("SMS_PROVIDERS", ["twilio", "twilio-backup"]),
    "push": ["fcm", "apns"],
    "webhook": ["webhook"],
}
# Providers of a channel for one category, in failover order, where it differs from
# CHANNEL_PROVIDERS: marketing email from the bulk sending domain, in batches.
CATEGORY_PROVIDERS = {
    "marketing": {"email": env_list("MARKETING_EMAIL_PROVIDERS", ["mailgun-bulk", "smtp"])},
}
# From-addresses per category (marketing mail often comes from its own domain).
EMAIL_FROM = {
    "critical": env_str("EMAIL_FROM_CRITICAL", "Security <security@mg.sandbox.test>"),
    "transactional": env_str("EMAIL_FROM_TRANSACTIONAL", "Notifications <notify@mg.sandbox.test>"),
    "social": env_str("EMAIL_FROM_SOCIAL", "Notifications <notify@mg.sandbox.test>"),
    "marketing": env_str("EMAIL_FROM_MARKETING", "News <news@news.mg.sandbox.test>"),
}
ANYMAIL = {
    "MAILGUN_API_KEY": PROVIDERS["mailgun"]["api_key"],
    "MAILGUN_API_URL": PROVIDERS["mailgun"]["api_url"],
    "MAILGUN_WEBHOOK_SIGNING_KEY": PROVIDERS["mailgun"]["webhook_signing_key"],
    # Basic-auth credentials the ESP puts in the tracking webhook URL (anymail checks them
    # besides the Mailgun signature).
    "WEBHOOK_SECRET": env_str("ANYMAIL_WEBHOOK_SECRET", "sandbox:sandbox-webhook-secret"),
}
# Generic webhooks are signed the Standard Webhooks way: HMAC-SHA256 over "<id>.<timestamp>.<body>".
WEBHOOK_SIGNATURE_TOLERANCE_SECONDS = env_int("WEBHOOK_SIGNATURE_TOLERANCE_SECONDS", 300, minimum=1)

# --- Sending: retries, breakers, pacing ---------------------------------------------------
SEND_MAX_ATTEMPTS = env_int("SEND_MAX_ATTEMPTS", 6, minimum=1)
SEND_BACKOFF_BASE_SECONDS = env_float("SEND_BACKOFF_BASE_SECONDS", 2.0)
SEND_BACKOFF_CAP_SECONDS = env_float("SEND_BACKOFF_CAP_SECONDS", 900.0)
# Deliveries claimed per database round trip by a sender, and provider calls in flight
# per worker process.
SEND_CHUNK = env_int("SEND_CHUNK", 50, minimum=1)
SEND_CONCURRENCY = env_int("SEND_CONCURRENCY", 16, minimum=1)
# A campaign's email is claimed this many deliveries at a time and dispatched in batches
# of this size: one provider batch call where the provider takes batches (Mailgun: 1,000).
SEND_BATCH_CHUNK = env_int("SEND_BATCH_CHUNK", 1000, minimum=1)
# A claimed delivery whose sender vanished is sent again after this long.
SEND_CLAIM_SECONDS = env_int("SEND_CLAIM_SECONDS", 60, minimum=5)
SEND_TIMEOUT_SECONDS = env_float("SEND_TIMEOUT_SECONDS", 10.0)
BREAKER_WINDOW_SECONDS = env_int("BREAKER_WINDOW_SECONDS", 30, minimum=1)
BREAKER_MIN_CALLS = env_int("BREAKER_MIN_CALLS", 10, minimum=1)
BREAKER_FAILURE_RATIO = env_float("BREAKER_FAILURE_RATIO", 0.5)
BREAKER_OPEN_SECONDS = env_float("BREAKER_OPEN_SECONDS", 10.0)

# --- SMS abuse protection -----------------------------------------------------------------
SMS_ALLOWED_COUNTRIES = env_list(
    "SMS_ALLOWED_COUNTRIES", ["US", "CA", "GB", "DE", "FR", "NL", "ES", "IT", "SE"]
)
SMS_LIMIT_PER_DESTINATION = env_str("SMS_LIMIT_PER_DESTINATION", "10/3600")
SMS_LIMIT_PER_PREFIX = env_str("SMS_LIMIT_PER_PREFIX", "1000/3600")
SMS_LIMIT_PER_IP = env_str("SMS_LIMIT_PER_IP", "20/3600")
SMS_PREFIX_DIGITS = env_int("SMS_PREFIX_DIGITS", 6, minimum=2)
SMS_DAILY_SPEND_CAP = env_float("SMS_DAILY_SPEND_CAP", 500.0)
# The longest SMS sent, in segments (153 GSM-7 or 67 UCS-2 characters each when
# concatenated); a longer rendered text fails the delivery before any provider call
# (notifications/services/channel_checks.py) and the admin's preview shows the count.
SMS_MAX_SEGMENTS = env_int("SMS_MAX_SEGMENTS", 6, minimum=1)

# --- Digests ---------------------------------------------------------------------------------
# When daily and weekly digests go out, in each recipient's timezone (HH:MM; weekly on
# DIGEST_WEEKDAY, 0 = Monday), and how many unread items one lists (the rest are counted).
DIGEST_LOCAL_TIME = env_str("DIGEST_LOCAL_TIME", "08:00")
DIGEST_WEEKDAY = env_int("DIGEST_WEEKDAY", 0, minimum=0)
DIGEST_MAX_ITEMS = env_int("DIGEST_MAX_ITEMS", 20, minimum=1)
