#!/usr/bin/env bash
# A private CA and a server certificate for 127.0.0.1 signed by it, for the TLS
# tests (SMTP through aiosmtpd, IMAP through the mail world's Dovecot):
#
#   pki.sh DIR    writes DIR/ca.pem, DIR/server.pem and DIR/server.key (P-256,
#                 valid two days); does nothing if DIR/server.pem exists.
#
# The server certificate names 127.0.0.1 as an IP address (subjectAltName), so a
# client connecting to 127.0.0.1 checks it as it would a public name. Needs the
# Debian package openssl (.ci/run installs it).
set -euo pipefail

[[ $# -eq 1 ]] || { echo "usage: $0 DIR" >&2; exit 2; }
DIR=$1
[[ -f "$DIR/server.pem" ]] && exit 0
mkdir -p "$DIR"
cd "$DIR"
EC=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
quiet() { local out; out=$("$@" 2>&1) || { echo "$out" >&2; exit 1; }; }
quiet openssl req -x509 "${EC[@]}" -keyout ca.key -out ca.pem -days 2 \
    -subj "/CN=followup test CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign"
quiet openssl req "${EC[@]}" -keyout server.key -out server.csr -subj "/CN=127.0.0.1"
cat >server.ext <<'EXT'
subjectAltName=IP:127.0.0.1
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
EXT
quiet openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
    -out server.pem.tmp -days 2 -extfile server.ext
# Readable by the servers' own users (Dovecot reads it as root, aiosmtpd as us).
chmod 0644 server.key
mv server.pem.tmp server.pem
