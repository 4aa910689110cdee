#!/bin/sh
# Apply globals.sql to OpenEMR's database. Used by the `openemr-setup` service in
# docker-compose.yml (mariadb image, which has the `mariadb` client); works by hand too.
#
# Environment:
#   OPENEMR_DB_HOST, OPENEMR_DB_NAME, OPENEMR_DB_USER, OPENEMR_DB_PASSWORD   (required)
#   OPENEMR_DB_PORT      default 3306
#   OPENEMR_SITE_ADDR    value for the site_addr_oath global, e.g. https://ehr.example.org
#                        (scheme://host[:port], no path, no trailing slash); empty = keep
#   OPENEMR_CONFIG_DIR   where globals.sql is; default: this script's folder
set -eu

: "${OPENEMR_DB_HOST:?OPENEMR_DB_HOST is not set}"
: "${OPENEMR_DB_NAME:?OPENEMR_DB_NAME is not set}"
: "${OPENEMR_DB_USER:?OPENEMR_DB_USER is not set}"
: "${OPENEMR_DB_PASSWORD:?OPENEMR_DB_PASSWORD is not set}"
OPENEMR_DB_PORT="${OPENEMR_DB_PORT:-3306}"
OPENEMR_SITE_ADDR="${OPENEMR_SITE_ADDR:-}"
OPENEMR_CONFIG_DIR="${OPENEMR_CONFIG_DIR:-$(dirname "$0")}"

# The address goes into SQL, so accept only what a site address can look like.
if [ -n "$OPENEMR_SITE_ADDR" ]; then
    if ! printf '%s' "$OPENEMR_SITE_ADDR" | grep -Eq '^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$'; then
        echo "OPENEMR_SITE_ADDR must look like https://host[:port] (no path, no trailing slash)" >&2
        exit 2
    fi
    site_addr_sql="SET @site_addr_oath = '$OPENEMR_SITE_ADDR';"
else
    site_addr_sql="SET @site_addr_oath = NULL;"
fi

# Password in a private option file, not on the command line.
umask 077
options="$(mktemp)"
trap 'rm -f "$options"' EXIT
printf '[client]\npassword="%s"\n' "$OPENEMR_DB_PASSWORD" > "$options"

{
    printf '%s\n' "$site_addr_sql"
    cat "$OPENEMR_CONFIG_DIR/globals.sql"
} | mariadb --defaults-extra-file="$options" --host="$OPENEMR_DB_HOST" --port="$OPENEMR_DB_PORT" \
        --user="$OPENEMR_DB_USER" --table "$OPENEMR_DB_NAME"

echo "openemr-setup: globals and document categories applied"
