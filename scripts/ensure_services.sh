#!/usr/bin/env bash
# Make sure the local services the platform needs answer on 127.0.0.1:
#   PostgreSQL 5432, Redis 6379, Mosquitto 1883; with --rabbitmq (make test) RabbitMQ 5672
#   too, which the test suite also runs the pipeline on.
# A service that answers is used as it is; one that does not is started (and installed
# with apt-get when its binary is missing and we are root). PostgreSQL must accept the
# role in DATABASE_URL from 127.0.0.1 without a password: on a bare Debian cluster, which
# asks for scram over TCP, we add "trust" lines for 127.0.0.1/32 and ::1/128 (localhost
# only) and reload. Finally the database named in DATABASE_URL is created when missing.
#
# Idempotent, and fast (well under a second) when everything is already up.
# Never stops or restarts a running service: other projects and CI may be using it.
set -euo pipefail

HOST=127.0.0.1
# The ports can be overridden (ENSURE_*_PORT) only to exercise this script itself.
PG_PORT=${ENSURE_PG_PORT:-5432}
REDIS_PORT=${ENSURE_REDIS_PORT:-6379}
MQTT_PORT=${ENSURE_MQTT_PORT:-1883}
AMQP_PORT=${ENSURE_AMQP_PORT:-5672}
DEADLINE_SECONDS=30
DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/notifications}"

APT_UPDATED=0

say() { printf '%s\n' "$*"; }
die() {
	printf 'ensure_services: %s\n' "$*" >&2
	exit 1
}

is_root() { [ "$(id -u)" -eq 0 ]; }

# Answers when something accepts a TCP connection on host:port (bash /dev/tcp, no tools).
tcp_open() {
	local host=$1 port=$2
	(exec 3<>"/dev/tcp/${host}/${port}") 2>/dev/null
}

# Poll a check with a deadline instead of sleeping a fixed time.
wait_for() {
	local what=$1
	shift
	local deadline=$((SECONDS + DEADLINE_SECONDS))
	until "$@"; do
		if ((SECONDS >= deadline)); then
			die "${what} did not answer within ${DEADLINE_SECONDS}s"
		fi
		sleep 0.2
	done
}

apt_install() {
	# $@: Debian package names.
	if ! is_root; then
		die "missing: $*. Install them (as root: apt-get install -y $*) or start the services yourself, then run again."
	fi
	command -v apt-get >/dev/null 2>&1 || die "missing: $* and no apt-get here; install them by hand."
	if [ "$APT_UPDATED" -eq 0 ]; then
		say "apt-get update"
		DEBIAN_FRONTEND=noninteractive apt-get update -qq
		APT_UPDATED=1
	fi
	say "apt-get install -y $*"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

as_postgres() {
	# Run a command as the postgres OS user from a directory it can read.
	(cd / && runuser -u postgres -- "$@")
}

# --- PostgreSQL ------------------------------------------------------------------------------

pg_answers() {
	if command -v pg_isready >/dev/null 2>&1; then
		pg_isready -q -h "$HOST" -p "$PG_PORT" -t 2
	else
		tcp_open "$HOST" "$PG_PORT"
	fi
}

pg_version() {
	# The newest installed PostgreSQL major version, or nothing.
	local dir
	dir=$(ls -d /usr/lib/postgresql/*/bin/postgres 2>/dev/null | sort -V | tail -n 1 || true)
	[ -n "$dir" ] || return 0
	basename "$(dirname "$(dirname "$dir")")"
}

ensure_postgresql() {
	if pg_answers; then
		say "postgresql: using the running server at ${HOST}:${PG_PORT}"
		return
	fi
	local how="with pg_ctlcluster"
	if [ -z "$(pg_version)" ]; then
		apt_install postgresql postgresql-client
		how="after apt-get install postgresql, with pg_ctlcluster"
	fi
	is_root || die "PostgreSQL is not answering on ${HOST}:${PG_PORT}. Start it (pg_ctlcluster <version> main start) or run this script as root."
	local version
	version=$(pg_version)
	if ! pg_lsclusters -h 2>/dev/null | awk '{print $1, $2}' | grep -qx "${version} main"; then
		say "postgresql: creating cluster ${version}/main"
		pg_createcluster "$version" main >/dev/null
	fi
	pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
	wait_for "postgresql at ${HOST}:${PG_PORT}" pg_answers
	say "postgresql: started ${how} (cluster ${version}/main)"
}

# Fields of DATABASE_URL, parsed by Python's urllib (shell parsing of URLs is error-prone).
read_database_url() {
	local py=python3
	[ -x .venv/bin/python ] && py=.venv/bin/python
	command -v "$py" >/dev/null 2>&1 || die "python3 is needed to read DATABASE_URL"
	"$py" - "$DATABASE_URL" <<'PY'
import sys
from urllib.parse import unquote, urlsplit

url = urlsplit(sys.argv[1])
if url.scheme not in {"postgres", "postgresql"}:
    sys.exit(f"DATABASE_URL must start with postgres://, got {url.scheme!r}")
print(url.hostname or "127.0.0.1")
print(url.port or 5432)
print(unquote(url.username or "postgres"))
print(unquote(url.path.lstrip("/")) or "notifications")
PY
}

pg_trust_localhost() {
	# Add trust lines for localhost ahead of the existing rules (the first match wins).
	local hba
	hba=$(as_postgres psql -X -Atqc 'show hba_file')
	[ -f "$hba" ] || die "cannot find pg_hba.conf (got '${hba}')"
	if ! grep -q '# added by scripts/ensure_services.sh' "$hba"; then
		local tmp
		tmp=$(mktemp)
		{
			echo '# added by scripts/ensure_services.sh: local development trusts localhost'
			echo 'host all all 127.0.0.1/32 trust'
			echo 'host all all ::1/128 trust'
			cat "$hba"
		} >"$tmp"
		cat "$tmp" >"$hba"
		rm -f "$tmp"
	fi
	as_postgres psql -X -Atqc 'select pg_reload_conf()' >/dev/null
	say "postgresql: added 'trust' for 127.0.0.1/32 and ::1/128 to ${hba} and reloaded (localhost only)"
}

ensure_database() {
	command -v psql >/dev/null 2>&1 || apt_install postgresql-client
	# Fast path: one connection to the target database proves login and existence.
	if psql -X -w "$DATABASE_URL" -Atqc 'select 1' >/dev/null 2>&1; then
		return
	fi
	local fields host port user name
	fields=$(read_database_url)
	host=$(sed -n 1p <<<"$fields")
	port=$(sed -n 2p <<<"$fields")
	user=$(sed -n 3p <<<"$fields")
	name=$(sed -n 4p <<<"$fields")

	if ! psql -X -w -h "$host" -p "$port" -U "$user" -d postgres -Atqc 'select 1' >/dev/null 2>&1; then
		if [ "$host" != "127.0.0.1" ] && [ "$host" != "localhost" ] && [ "$host" != "::1" ]; then
			die "cannot log in to PostgreSQL at ${host}:${port} as ${user}; check DATABASE_URL"
		fi
		is_root || die "PostgreSQL refuses ${user}@${host} without a password. As root, add 'host all all 127.0.0.1/32 trust' to pg_hba.conf and reload, or put the password in DATABASE_URL."
		pg_trust_localhost
		psql -X -w -h "$host" -p "$port" -U "$user" -d postgres -Atqc 'select 1' >/dev/null 2>&1 ||
			die "still cannot log in to PostgreSQL as ${user}@${host}:${port} (does the role exist?)"
	fi
	local exists
	exists=$(psql -X -w -h "$host" -p "$port" -U "$user" -d postgres -Atq \
		-v dbname="$name" <<<"select 1 from pg_database where datname = :'dbname'")
	if [ "$exists" != "1" ]; then
		psql -X -w -h "$host" -p "$port" -U "$user" -d postgres -q -v ON_ERROR_STOP=1 \
			-v dbname="$name" <<<'create database :"dbname"' >/dev/null
		say "postgresql: created database ${name}"
	fi
}

# --- Redis -----------------------------------------------------------------------------------

redis_answers() {
	if command -v redis-cli >/dev/null 2>&1; then
		[ "$(redis-cli -h "$HOST" -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]
	else
		local reply=""
		exec 4<>"/dev/tcp/${HOST}/${REDIS_PORT}" 2>/dev/null || return 1
		printf 'PING\r\n' >&4
		read -r -t 2 reply <&4 || true
		exec 4>&-
		[ "${reply%$'\r'}" = "+PONG" ]
	fi
}

ensure_redis() {
	if redis_answers; then
		say "redis: using the running server at ${HOST}:${REDIS_PORT}"
		return
	fi
	local how=""
	if ! command -v redis-server >/dev/null 2>&1; then
		apt_install redis-server
		how="after apt-get install redis-server, "
	fi
	mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
	local dir=/var/lib/redis logfile=/var/log/redis/ci.log
	if ! [ -w "$dir" ] || ! { [ -w "$(dirname "$logfile")" ] || [ -w "$logfile" ]; }; then
		dir=${TMPDIR:-/tmp}
		logfile="${dir}/redis-${REDIS_PORT}.log"
	fi
	redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" \
		--appendonly no --dir "$dir" --logfile "$logfile" >/dev/null
	wait_for "redis at ${HOST}:${REDIS_PORT}" redis_answers
	say "redis: started ${how}with redis-server --daemonize yes (log ${logfile})"
}

# --- Mosquitto -------------------------------------------------------------------------------

mqtt_answers() { tcp_open "$HOST" "$MQTT_PORT"; }

ensure_mosquitto() {
	if mqtt_answers; then
		say "mosquitto: using the running server at ${HOST}:${MQTT_PORT}"
		return
	fi
	local how=""
	if ! command -v mosquitto >/dev/null 2>&1 && ! [ -x /usr/sbin/mosquitto ]; then
		apt_install mosquitto
		how="after apt-get install mosquitto, "
	fi
	local bin
	bin=$(command -v mosquitto || echo /usr/sbin/mosquitto)
	if [ -r /etc/mosquitto/mosquitto.conf ] && is_root; then
		# The Debian config's pid and log directories may not exist before the first start.
		mkdir -p /run/mosquitto /var/log/mosquitto /var/lib/mosquitto
		chown mosquitto: /run/mosquitto /var/log/mosquitto /var/lib/mosquitto 2>/dev/null || true
		"$bin" -d -c /etc/mosquitto/mosquitto.conf
		how="${how}with mosquitto -d -c /etc/mosquitto/mosquitto.conf"
	else
		# Without a config, mosquitto 2 listens on loopback only and allows anonymous clients.
		"$bin" -d -p "$MQTT_PORT"
		how="${how}with mosquitto -d -p ${MQTT_PORT}"
	fi
	wait_for "mosquitto at ${HOST}:${MQTT_PORT}" mqtt_answers
	say "mosquitto: started ${how}"
}

# --- RabbitMQ (only with --rabbitmq: the test suite runs the pipeline on it too) ----------------

amqp_answers() { tcp_open "$HOST" "$AMQP_PORT"; }

rabbitmq_ready() { amqp_answers && rabbitmqctl -q status >/dev/null 2>&1; }

ensure_rabbitmq() {
	if amqp_answers; then
		say "rabbitmq: using the running server at ${HOST}:${AMQP_PORT}"
		return
	fi
	local how=""
	if ! command -v rabbitmq-server >/dev/null 2>&1 && ! [ -x /usr/sbin/rabbitmq-server ]; then
		apt_install rabbitmq-server
		how="after apt-get install rabbitmq-server, "
	fi
	is_root || die "RabbitMQ is not answering on ${HOST}:${AMQP_PORT}. Start it (rabbitmq-server -detached) or run this script as root."
	rabbitmq-server -detached >/dev/null 2>&1 || true
	DEADLINE_SECONDS=60 wait_for "rabbitmq at ${HOST}:${AMQP_PORT}" rabbitmq_ready
	say "rabbitmq: started ${how}with rabbitmq-server -detached"
}

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ensure_postgresql
ensure_database
ensure_redis
ensure_mosquitto
if [ "${1:-}" = "--rabbitmq" ]; then
	ensure_rabbitmq
fi
