#!/usr/bin/env bash
# Stop the embedded HAPI server started by run-hapi.sh:  stop-hapi.sh [--port N]
exec "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/run-hapi.sh" --stop "$@"
