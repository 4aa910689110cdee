#!/usr/bin/env bash
# Start Meoring Hub's embedded HAPI FHIR JPA server (R4) without Docker.
#
#   run-hapi.sh [--port N] [--data-dir DIR] [--foreground] [--timeout S] [-- extra Spring args]
#   run-hapi.sh --stop [--port N]
#   run-hapi.sh --status [--port N]
#
# Default: builds (or reuses) the cached jar via build-hapi.sh, starts it in the background
# (setsid/nohup), waits until GET http://127.0.0.1:N/fhir/metadata answers 200 and prints the FHIR
# base URL http://127.0.0.1:N/fhir as the LAST line on stdout (everything else goes to stderr), so
#   BASE=$(hapi-config/run-hapi.sh --port 8091)
# works. If a server started by this script already answers on that port, it just prints the URL.
#
#   --port N        HTTP port (default $HAPI_PORT or 8080)
#   --data-dir DIR  persistent H2 file database DIR/hapi.mv.db (data survives restarts);
#                   without it the database is in memory and every start is empty
#   --foreground    run in the foreground (logs to the terminal, Ctrl-C stops it)
#   --timeout S     seconds to wait for /fhir/metadata (default $HAPI_START_TIMEOUT or 300)
#   --stop          stop the server started for --port (SIGTERM, then SIGKILL after 30 s)
#   --status        print the base URL and exit 0 if it is up, exit 1 if not
#   -- ARGS         passed to the server, e.g. -- --hapi.fhir.validation.requests_enabled=true
#
# Files: ${MEORING_CACHE:-~/.cache/meoring}/hapi/run/hapi-<port>.pid and hapi-<port>.log (or
# $HAPI_RUN_DIR). JVM options: $HAPI_JAVA_OPTS replaces the defaults below; $JAVA (default java).
# Startup speed-up: the jar is unpacked once next to the cached jar and, after the first start, a
# class-data-sharing archive is built in the background at low priority (MEORING_HAPI_CDS=off
# disables both the archive and its use).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE_ROOT="${MEORING_CACHE:-$HOME/.cache/meoring}"
RUN_DIR="${HAPI_RUN_DIR:-$CACHE_ROOT/hapi/run}"
JAVA="${JAVA:-java}"
PORT="${HAPI_PORT:-8080}"
TIMEOUT="${HAPI_START_TIMEOUT:-300}"
DATA_DIR=""
MODE=start
FOREGROUND=0
EXTRA=()

err() { echo "run-hapi.sh: ERROR: $*" >&2; }
log() { echo "run-hapi.sh: $*" >&2; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2; }

while [ $# -gt 0 ]; do
	case "$1" in
	--port) PORT="${2:?--port needs a value}"; shift 2 ;;
	--port=*) PORT="${1#*=}"; shift ;;
	--data-dir) DATA_DIR="${2:?--data-dir needs a value}"; shift 2 ;;
	--data-dir=*) DATA_DIR="${1#*=}"; shift ;;
	--timeout) TIMEOUT="${2:?--timeout needs a value}"; shift 2 ;;
	--timeout=*) TIMEOUT="${1#*=}"; shift ;;
	--foreground) FOREGROUND=1; shift ;;
	--stop) MODE=stop; shift ;;
	--status) MODE=status; shift ;;
	-h | --help) usage; exit 0 ;;
	--) shift; EXTRA=("$@"); break ;;
	*) err "unknown argument: $1 (see --help)"; exit 2 ;;
	esac
done
case "$PORT" in '' | *[!0-9]*) err "--port must be a number, got '$PORT'"; exit 2 ;; esac

BASE="http://127.0.0.1:$PORT/fhir"
PID_FILE="$RUN_DIR/hapi-$PORT.pid"
LOG_FILE="$RUN_DIR/hapi-$PORT.log"
mkdir -p "$RUN_DIR"

metadata_ok() {
	[ "$(curl -s -o /dev/null -m 10 -w '%{http_code}' "$BASE/metadata" 2>/dev/null || true)" = 200 ]
}
our_pid() { # prints the pid from the pid file if that process is still alive
	local p
	[ -f "$PID_FILE" ] || return 1
	p="$(cat "$PID_FILE" 2>/dev/null || true)"
	[ -n "$p" ] && kill -0 "$p" 2>/dev/null || return 1
	# guard against a stale pid file whose pid now belongs to something else
	if [ -r "/proc/$p/cmdline" ] && ! tr '\0' ' ' <"/proc/$p/cmdline" | grep -q 'hapi-server'; then
		return 1
	fi
	echo "$p"
}

stop_server() {
	local p
	if ! p="$(our_pid)"; then
		log "no server started by run-hapi.sh on port $PORT (pid file $PID_FILE)"
		rm -f "$PID_FILE"
		return 0
	fi
	log "stopping HAPI pid $p (port $PORT)"
	kill -TERM "$p" 2>/dev/null || true
	for _ in $(seq 1 60); do
		kill -0 "$p" 2>/dev/null || break
		sleep 0.5
	done
	if kill -0 "$p" 2>/dev/null; then
		log "pid $p still alive after 30 s, sending SIGKILL"
		kill -KILL "$p" 2>/dev/null || true
		sleep 1
	fi
	rm -f "$PID_FILE"
	log "stopped"
}

if [ "$MODE" = stop ]; then
	stop_server
	exit 0
fi
if [ "$MODE" = status ]; then
	if metadata_ok; then echo "$BASE"; exit 0; fi
	log "no FHIR server answering at $BASE"
	exit 1
fi

# ---- already running? ----------------------------------------------------------------------
if p="$(our_pid)"; then
	if metadata_ok; then
		log "already running (pid $p, log $LOG_FILE)"
		echo "$BASE"
		exit 0
	fi
	err "a server started earlier (pid $p) holds port $PORT but does not answer; run '$0 --stop --port $PORT' first"
	exit 1
fi
if metadata_ok || (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
	err "port $PORT is already in use by another process"
	exit 1
fi

# ---- build (cached) ------------------------------------------------------------------------
JAR="$("$HERE/build-hapi.sh" | tail -n 1)"
[ -f "$JAR" ] || { err "build-hapi.sh did not produce a jar"; exit 1; }

# ---- unpack once: starts faster than the nested fat jar and allows class data sharing --------
APP_DIR="${JAR%.jar}"
APP_JAR="$APP_DIR/$(basename "$JAR")"
if [ ! -f "$APP_JAR" ]; then
	tmp="$APP_DIR.tmp.$$"
	rm -rf "$tmp"
	if "$JAVA" -Djarmode=tools -jar "$JAR" extract --destination "$tmp" >/dev/null 2>&1 && [ -f "$tmp/$(basename "$JAR")" ]; then
		# Never replace an existing dir: a parallel caller may already run from it.
		mv -T "$tmp" "$APP_DIR" 2>/dev/null || rm -rf "$tmp"
	else
		rm -rf "$tmp"
	fi
	if [ ! -f "$APP_JAR" ]; then
		log "could not unpack $JAR; running the fat jar"
		APP_JAR="$JAR"
	fi
fi

# ---- JVM options -----------------------------------------------------------------------------
# -Xmx1g: enough for the test workloads (RSS ends up ~0.7-1.1 GB).
# C1 only (TieredStopAtLevel=1) and SerialGC: on 2 cores they start noticeably faster and use less
# memory; peak throughput is lower, which does not matter for tests. Override with HAPI_JAVA_OPTS.
read -r -a JOPTS <<<"${HAPI_JAVA_OPTS:--Xmx1g -XX:TieredStopAtLevel=1 -XX:+UseSerialGC}"
JOPTS+=("-Djava.awt.headless=true" "-Dfile.encoding=UTF-8")
JSA="$APP_DIR/app.jsa"
CLASS_LIST=""
if [ "${MEORING_HAPI_CDS:-auto}" != off ] && [ "$APP_JAR" != "$JAR" ]; then
	if [ -f "$JSA" ]; then
		JOPTS+=("-XX:SharedArchiveFile=$JSA" "-Xshare:auto" "-Xlog:cds=off" "-Xlog:cds+dynamic=off")
	elif [ ! -f "$APP_DIR/classes.lst" ]; then
		CLASS_LIST="$APP_DIR/classes.$$.lst"
		JOPTS+=("-XX:DumpLoadedClassList=$CLASS_LIST")
	fi
fi

SARGS=("--server.port=$PORT")
if [ -n "$DATA_DIR" ]; then
	mkdir -p "$DATA_DIR"
	DATA_DIR="$(cd "$DATA_DIR" && pwd)"
	# DB_CLOSE_ON_EXIT=FALSE: Spring closes the pool on shutdown, H2 must not close the DB first.
	SARGS+=("--spring.datasource.url=jdbc:h2:file:$DATA_DIR/hapi;DB_CLOSE_ON_EXIT=FALSE")
fi
SARGS+=("${EXTRA[@]+"${EXTRA[@]}"}")

if [ "$FOREGROUND" = 1 ]; then
	log "foreground: $JAVA ${JOPTS[*]} -jar $APP_JAR ${SARGS[*]}"
	echo $$ >"$PID_FILE"
	exec "$JAVA" "${JOPTS[@]}" -jar "$APP_JAR" "${SARGS[@]}"
fi

# ---- background start ------------------------------------------------------------------------
: >"$LOG_FILE"
start=$(date +%s)
setsid nohup "$JAVA" "${JOPTS[@]}" -jar "$APP_JAR" "${SARGS[@]}" >>"$LOG_FILE" 2>&1 </dev/null &
pid=$!
echo "$pid" >"$PID_FILE"
log "started pid $pid on port $PORT${DATA_DIR:+ (data dir $DATA_DIR)}"
log "pid file: $PID_FILE"
log "log file: $LOG_FILE"

next_report=10
while :; do
	if ! kill -0 "$pid" 2>/dev/null; then
		err "HAPI exited during startup; last log lines:"
		tail -n 40 "$LOG_FILE" >&2 || true
		rm -f "$PID_FILE"
		exit 1
	fi
	if metadata_ok; then break; fi
	elapsed=$(($(date +%s) - start))
	if [ "$elapsed" -ge "$TIMEOUT" ]; then
		err "no 200 from $BASE/metadata after ${TIMEOUT}s; stopping pid $pid (log: $LOG_FILE)"
		tail -n 20 "$LOG_FILE" >&2 || true
		stop_server
		exit 1
	fi
	if [ "$elapsed" -ge "$next_report" ]; then
		log "waiting for $BASE/metadata ... ${elapsed}s"
		next_report=$((next_report + 10))
	fi
	sleep 0.5
done
log "ready in $(($(date +%s) - start))s"

# ---- first start: build the class-data-sharing archive in the background, at lowest priority ----
# Only one dump per build (mkdir is atomic); a parallel first start just drops its class list.
# A lock left by a dump that was killed is stale after 30 minutes.
find "$APP_DIR" -maxdepth 1 -name .cds.lock -mmin +30 -exec rmdir {} \; 2>/dev/null || true
if [ -n "$CLASS_LIST" ] && [ -s "$CLASS_LIST" ] && ! mkdir "$APP_DIR/.cds.lock" 2>/dev/null; then
	rm -f "$CLASS_LIST"
	CLASS_LIST=""
fi
if [ -n "$CLASS_LIST" ] && [ -s "$CLASS_LIST" ]; then
	# Lambda proxy classes are left out: archiving them crashes JDK 17's -Xshare:dump.
	# Written to temp names and renamed, so a half-written archive is never used.
	# shellcheck disable=SC2016
	setsid nohup nice -n 19 bash -c '
		cd "$1" || exit 1
		tmp_list="classes.tmp.$$"; tmp_jsa="$3.tmp.$$"
		grep -v "^@lambda-proxy" "$2" >"$tmp_list"; rm -f "$2"
		if "$4" -Xshare:dump -XX:SharedClassListFile="$tmp_list" -XX:SharedArchiveFile="$tmp_jsa" \
			-cp "$5" >cds-dump.log 2>&1 && [ -s "$tmp_jsa" ]; then
			mv -f "$tmp_jsa" "$3"; mv -f "$tmp_list" classes.lst
		else
			rm -f "$tmp_jsa" "$tmp_list" hs_err_pid*.log; : >classes.lst
		fi
		rmdir .cds.lock' cds-dump "$APP_DIR" "$CLASS_LIST" "$JSA" "$JAVA" "$APP_JAR" </dev/null >/dev/null 2>&1 &
	log "building a class-data-sharing archive in the background for faster later starts ($JSA)"
fi

echo "$BASE"
