#!/usr/bin/env bash
# Build Meoring Hub's embedded HAPI FHIR JPA server (server/) once and cache the jar OUTSIDE the clone.
#
#   hapi-config/build-hapi.sh            -> prints the jar path as its last stdout line
#
# Cache key: sha256 over server/pom.xml and every file under server/src (paths + contents), so any
# change to the server sources gives a new jar and an unchanged tree reuses the cached one:
#   ${MEORING_CACHE:-$HOME/.cache/meoring}/hapi/hapi-server-<sha256>.jar
# Maven's local repository is Maven's default (~/.m2/repository) unless MAVEN_OPTS/settings say
# otherwise. The build runs in a scratch copy under the cache dir, so the clone stays clean.
#
# Env: MEORING_CACHE (cache root), MVN (maven command, default "mvn"), HAPI_BUILD_KEEP=1 (keep the
# scratch build dir for debugging).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SERVER_DIR="$HERE/server"
CACHE_ROOT="${MEORING_CACHE:-$HOME/.cache/meoring}"
HAPI_CACHE="$CACHE_ROOT/hapi"
MVN="${MVN:-mvn}"

err() { echo "build-hapi.sh: ERROR: $*" >&2; }
log() { echo "build-hapi.sh: $*" >&2; }

[ -f "$SERVER_DIR/pom.xml" ] || { err "missing $SERVER_DIR/pom.xml"; exit 1; }

# --- cache key -------------------------------------------------------------------------------
hash_inputs() {
	(
		cd "$SERVER_DIR"
		{ echo pom.xml; find src -type f; } | LC_ALL=C sort | while IFS= read -r f; do
			printf '%s\n' "$f"
			sha256sum <"$f" | cut -d' ' -f1
		done
	) | sha256sum | cut -d' ' -f1
}
KEY="$(hash_inputs)"
JAR="$HAPI_CACHE/hapi-server-$KEY.jar"

mkdir -p "$HAPI_CACHE"
if [ -f "$JAR" ]; then
	log "cached: $JAR"
	echo "$JAR"
	exit 0
fi

# --- one build at a time (parallel callers wait, then find the jar cached) -----------------------
if command -v flock >/dev/null 2>&1; then
	exec 9>"$HAPI_CACHE/.build.lock"
	flock 9
	if [ -f "$JAR" ]; then
		log "cached (built by a parallel caller): $JAR"
		echo "$JAR"
		exit 0
	fi
fi

command -v "$MVN" >/dev/null 2>&1 || { err "Maven ('$MVN') not found on PATH"; exit 1; }
command -v java >/dev/null 2>&1 || { err "java not found on PATH"; exit 1; }

BUILD_DIR="$HAPI_CACHE/build-$KEY.$$"
BUILD_LOG="$HAPI_CACHE/build-$KEY.log"
rm -rf "$BUILD_DIR"
mkdir -p "$BUILD_DIR"
cp "$SERVER_DIR/pom.xml" "$BUILD_DIR/"
cp -R "$SERVER_DIR/src" "$BUILD_DIR/src"
cleanup() { [ "${HAPI_BUILD_KEEP:-0}" = 1 ] || rm -rf "$BUILD_DIR"; }
trap cleanup EXIT

log "building HAPI server (key ${KEY:0:12}..., log: $BUILD_LOG); a cold ~/.m2 downloads ~400 MB, allow several minutes"
start=$(date +%s)
if ! "$MVN" -B -q -f "$BUILD_DIR/pom.xml" package >"$BUILD_LOG" 2>&1; then
	# One clear line for the usual failure (the mirror not serving an artifact), then the details.
	reason="$(grep -m1 -E 'Could not resolve dependencies|Could not find artifact|Could not transfer artifact|Non-resolvable (parent|import) POM|Plugin .* could not be resolved|Failed to read artifact descriptor' "$BUILD_LOG" | sed -E 's/^\[ERROR\] *//' | cut -c1-400 || true)"
	if [ -n "$reason" ]; then
		err "Maven could not resolve a dependency: $reason (full log: $BUILD_LOG)"
	else
		err "Maven build failed (full log: $BUILD_LOG):"
		grep -E '^\[ERROR\]' "$BUILD_LOG" | head -n 15 >&2 || tail -n 30 "$BUILD_LOG" >&2
	fi
	exit 1
fi
built="$BUILD_DIR/target/meoring-hapi-server.jar"
[ -f "$built" ] || { err "Maven succeeded but $built is missing (log: $BUILD_LOG)"; exit 1; }
mv -f "$built" "$JAR.tmp.$$"
mv -f "$JAR.tmp.$$" "$JAR"
log "built in $(($(date +%s) - start))s: $JAR ($(du -h "$JAR" | cut -f1))"

# Each jar is ~300 MB (+ its unpacked copy made by run-hapi.sh): keep only the 3 newest builds.
ls -1t "$HAPI_CACHE"/hapi-server-*.jar 2>/dev/null | tail -n +4 | while IFS= read -r old; do
	log "pruning old build $old"
	rm -rf "$old" "${old%.jar}"
done

echo "$JAR"
