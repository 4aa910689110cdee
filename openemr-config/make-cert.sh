#!/bin/sh
# Give the OpenEMR container a TLS certificate for the name the hub uses, and hand the hub a
# CA bundle that trusts it. Run by the one-shot `openemr-cert` service in docker-compose.yml,
# inside the openemr image (it has openssl), before OpenEMR starts.
#
# Why: the image's own start script creates a self-signed certificate for CN=localhost only
# when /etc/ssl/private/selfsigned.key.pem is missing, then serves it (openemr-devops
# docker/openemr/*/ssl.sh). The hub connects to https://$OPENEMR_HOSTNAME, so it needs a
# certificate for that name and a way to trust it. We pre-create the same files with the
# right name; ssl.sh then uses ours.
#
# Environment:
#   OPENEMR_HOSTNAME   the name to certify (required)
#   SSL_DIR            OpenEMR's /etc/ssl volume (default /etc/ssl)
#   TRUST_DIR          where to write ca-bundle.pem for the hub (default /trust)
# A certificate from elsewhere (Let's Encrypt via the image's DOMAIN/EMAIL, or your own files
# at the same paths) is left alone unless it lacks the name.
set -eu

: "${OPENEMR_HOSTNAME:?OPENEMR_HOSTNAME is not set}"
if ! printf '%s' "$OPENEMR_HOSTNAME" | grep -Eq '^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$'; then
    echo "OPENEMR_HOSTNAME must be a host name (letters, digits, dots, hyphens)" >&2
    exit 2
fi
SSL_DIR="${SSL_DIR:-/etc/ssl}"
TRUST_DIR="${TRUST_DIR:-/trust}"
key="$SSL_DIR/private/selfsigned.key.pem"
cert="$SSL_DIR/certs/selfsigned.cert.pem"

mkdir -p "$SSL_DIR/private" "$SSL_DIR/certs" "$TRUST_DIR"

if [ -f "$cert" ] && openssl x509 -in "$cert" -noout -ext subjectAltName 2>/dev/null \
        | grep -Eq "DNS:$OPENEMR_HOSTNAME(,|\$)"; then
    echo "openemr-cert: certificate for $OPENEMR_HOSTNAME already present"
else
    echo "openemr-cert: creating a self-signed certificate for $OPENEMR_HOSTNAME"
    umask 077
    openssl req -x509 -newkey rsa:3072 -sha256 -days 825 -nodes \
        -keyout "$key" -out "$cert" \
        -subj "/CN=$OPENEMR_HOSTNAME" \
        -addext "subjectAltName=DNS:$OPENEMR_HOSTNAME,DNS:localhost" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign" \
        -addext "extendedKeyUsage=serverAuth"
    chmod 600 "$key"
    chmod 644 "$cert"
fi

# The public CAs plus OpenEMR's certificate; the hub points SSL_CERT_FILE at it.
umask 022
{
    if [ -f /etc/ssl/certs/ca-certificates.crt ]; then cat /etc/ssl/certs/ca-certificates.crt; fi
    cat "$cert"
} > "$TRUST_DIR/ca-bundle.pem.tmp"
mv "$TRUST_DIR/ca-bundle.pem.tmp" "$TRUST_DIR/ca-bundle.pem"
chmod 644 "$TRUST_DIR/ca-bundle.pem"
echo "openemr-cert: wrote $TRUST_DIR/ca-bundle.pem"
