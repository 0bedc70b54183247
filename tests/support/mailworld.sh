#!/usr/bin/env bash
# A throw-away "mail world" on 127.0.0.1 for followup's integration tests:
# Postfix (its own config dir, queue and ports) delivering by LMTP to Dovecot
# (IMAP with IDLE, LMTP, Sieve/Pigeonhole), all of it inside DIR. Several
# worlds can run at once (each has its own ports, dirs, queue, pid files and
# sockets). Needs root (Postfix's master must start as root) and the Debian
# packages postfix dovecot-imapd dovecot-lmtpd dovecot-sieve.
#
#   mailworld.sh start DIR         create/refresh the world in DIR, start it,
#                                  print KEY=VALUE lines (see below) once all
#                                  three ports answer. On a running world it
#                                  only prints them.
#   mailworld.sh stop DIR          stop Postfix and Dovecot of DIR (no-op if
#                                  not running); kills leftovers of this world.
#   mailworld.sh restart-imap DIR  stop Dovecot (IMAP+LMTP), start it again on
#                                  the same ports; returns once it answers.
#   mailworld.sh stop-imap DIR     stop Dovecot only (Postfix then defers mail
#                                  for the two domains and retries every ~1 s)
#   mailworld.sh start-imap DIR    start Dovecot only (after stop-imap)
#   mailworld.sh add-user DIR ADDR add a mailbox user (password "secret");
#                                  the domain must be followup.test or
#                                  prospect.test. Works on a running world.
#   mailworld.sh status DIR        exit 0 and print the lines if it runs
#   mailworld.sh env DIR           print the lines (running or not)
#   mailworld.sh queue DIR         print how many messages Postfix still holds
#
# Printed lines (shell syntax, safe to `eval`; values never contain spaces):
#   MAILWORLD_DIR SMTP_HOST SMTP_PORT IMAP_HOST IMAP_PORT IMAPS_PORT LMTP_PORT DOMAIN
#   PROSPECT_DOMAIN PASSWORD REP LI COLLEAGUE OOO UNKNOWN USERS
#   POSTFIX_CONFIG DOVECOT_CONFIG POSTFIX_LOG DOVECOT_LOG MAIL_ROOT CA_FILE
#
# With MAILWORLD_OAUTH2_URL=http://127.0.0.1:PORT/PATH at start, Dovecot also
# takes XOAUTH2 and OAUTHBEARER, checking each bearer token against that
# token-introspection URL (RFC 7662, POST token=...; the answer must carry
# "active": true and "username": the user), and Postfix listens for submission
# on SUBMISSION_PORT with SASL through Dovecot (AUTH there is required; no TLS,
# loopback only). Extra printed lines: SUBMISSION_PORT SASL_PORT OAUTH2_URL.
#
# Dovecot offers STARTTLS on IMAP_PORT and TLS from the first byte on
# IMAPS_PORT, with a certificate for 127.0.0.1 signed by the CA in CA_FILE
# (tests/support/pki.sh); plain logins on IMAP_PORT work too.
#
# Users (password "secret"): rep@followup.test, li@prospect.test,
# colleague@prospect.test, ooo@prospect.test (Sieve vacation, :days 1), plus
# $MAILWORLD_EXTRA_USERS (space-separated addresses) at start. Mail to any
# other address in followup.test/prospect.test is accepted by Postfix, refused
# by Dovecot's LMTP (550 5.1.1) and bounced by Postfix with an RFC 3464 DSN.
# Mail to any other domain is bounced at once (error transport): nothing
# leaves 127.0.0.1.
#
# Layout of DIR (must be an absolute path without spaces, short enough for
# unix sockets (~60 chars), and reachable by the "mail" user: the script
# makes DIR itself mode 0755; its parents must be searchable, e.g. /tmp/...):
#   env, dovecot.conf, users, dovecot.log, run/ (Dovecot base_dir),
#   state/, mail/USER/ (maildirs, owner mail), home/USER/, sieve/,
#   postfix/{main.cf,master.cf}, postfix-queue/, postfix-data/, postfix.log
# Used by tests/it/mailworld.rs; .ci/run installs the packages.
set -euo pipefail

die() { echo "mailworld.sh: $*" >&2; exit 1; }
usage() {
    die "usage: $0 start|stop|restart-imap|stop-imap|start-imap|status|env|queue DIR | add-user DIR ADDR"
}

DOMAIN=followup.test
PROSPECT_DOMAIN=prospect.test
PASSWORD=secret
BASE_USERS="rep@followup.test li@prospect.test colleague@prospect.test ooo@prospect.test"
MAIL_USER=mail       # Debian's uid/gid 8: owner of the maildirs
PORT_LOCKS=/tmp/mailworld-ports   # short-lived port reservations between worlds
START_TIMEOUT=${MAILWORLD_TIMEOUT:-30}

cmd=${1:-}
[[ -n "$cmd" ]] || usage
DIR=${2:-}
[[ -n "$DIR" ]] || usage
case "$DIR" in /*) ;; *) DIR="$PWD/$DIR" ;; esac
DIR=${DIR%/}
[[ "$DIR" =~ ^/[A-Za-z0-9._/+-]+$ ]] || die "DIR must be an absolute path of [A-Za-z0-9._/+-]: $DIR"

# Ports come from DIR/env only, never from the caller's environment.
unset SMTP_PORT IMAP_PORT IMAPS_PORT LMTP_PORT SUBMISSION_PORT SASL_PORT OAUTH2_URL

PF_CONF=$DIR/postfix
PF_QUEUE=$DIR/postfix-queue
PF_DATA=$DIR/postfix-data
DC_CONF=$DIR/dovecot.conf
DC_BASE=$DIR/run

now_ms() { local t; t=$(date +%s%N); echo $((t / 1000000)); }

# ---------------------------------------------------------------- processes
# A zombie (exited, not yet reaped by init) counts as gone.
pid_alive() {
    [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null || return 1
    local st
    st=$(awk '{print $3}' 2>/dev/null <"/proc/$1/stat") || return 1
    [[ "$st" != Z ]]
}
pf_pid() { tr -dc 0-9 2>/dev/null <"$PF_QUEUE/pid/master.pid" || true; }
dc_pid() { tr -dc 0-9 2>/dev/null <"$DC_BASE/master.pid" || true; }
pf_running() { pid_alive "$(pf_pid)"; }
dc_running() { pid_alive "$(dc_pid)"; }

# All descendants of a pid (one `ps` snapshot, walked by PPID).
descendants() {
    ps -e -o pid=,ppid= | awk -v root="$1" '
        { kids[$2] = kids[$2] " " $1 }
        END {
            todo = root
            while (todo != "") {
                n = split(todo, a, " "); todo = ""
                for (i = 1; i <= n; i++) {
                    m = split(kids[a[i]], b, " ")
                    for (j = 1; j <= m; j++) { printf "%s ", b[j]; todo = todo " " b[j] }
                }
            }
        }'
}

# wait_gone TIMEOUT_S PID...: wait until none of the pids is alive.
wait_gone() {
    local deadline=$(( $(now_ms) + $1 * 1000 )) p alive
    shift
    while :; do
        alive=""
        for p in "$@"; do pid_alive "$p" && alive+=" $p"; done
        [[ -z "$alive" ]] && return 0
        (( $(now_ms) < deadline )) || { echo "$alive"; return 1; }
        sleep 0.05
    done
}

# ---------------------------------------------------------------- ports
# Connect test: 0 if something accepts on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Free = nothing accepts connections on it. (A bind test would need python3,
# whose start-up costs ~0.2 s under pyenv; ports in 20000-32000 are below
# Linux's ephemeral range, so no outgoing connection holds one, and Dovecot and
# Postfix bind with SO_REUSEADDR, so TIME_WAIT leftovers do not matter. A port
# taken by a bound-but-not-listening socket makes start fail and retry.)
port_free() { ! port_open "$1"; }

# Reserve a port for this world while it starts: mkdir is atomic, so two worlds
# starting at once never pick the same port. Reservations older than 120 s are
# stale (a start that died) and are taken over.
RESERVED=()
reserve_port() {
    local port=$1 d="$PORT_LOCKS/$1" age
    mkdir -p "$PORT_LOCKS"
    if ! mkdir "$d" 2>/dev/null; then
        age=$(( $(date +%s) - $(stat -c %Y "$d" 2>/dev/null || echo 0) ))
        (( age > 120 )) || return 1
        rm -rf "$d"
        mkdir "$d" 2>/dev/null || return 1
    fi
    RESERVED+=("$d")
    port_free "$port" && return 0
    rmdir "$d" 2>/dev/null || true
    return 1
}
release_ports() {
    local d
    for d in "${RESERVED[@]}"; do rmdir "$d" 2>/dev/null || true; done
    RESERVED=()
}

# pick_port [PREFERRED]: a free port in 20000-32000 (below Linux's ephemeral
# range, so outgoing connections do not take it meanwhile).
pick_port() {
    local want=${1:-} i p
    if [[ -n "$want" ]] && reserve_port "$want"; then echo "$want"; return; fi
    for i in $(seq 1 200); do
        p=$(( 20000 + (RANDOM * 32768 + RANDOM) % 12000 ))
        if reserve_port "$p"; then echo "$p"; return; fi
    done
    die "no free port found"
}

# greets PORT PREFIX: 0 if the server on PORT sends a first line starting with PREFIX.
greets() {
    local port=$1 prefix=$2
    (
        exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
        IFS= read -r -t 5 line <&3 || exit 1
        case "$prefix" in
            '* OK'*) printf 'a LOGOUT\r\n' >&3 ;;
            *) printf 'QUIT\r\n' >&3 ;;
        esac
        [[ "$line" == "$prefix"* ]]
    ) 2>/dev/null
}

wait_greets() { # PORT PREFIX NAME
    local deadline=$(( $(now_ms) + START_TIMEOUT * 1000 ))
    until greets "$1" "$2"; do
        (( $(now_ms) < deadline )) || return 1
        sleep 0.05
    done
}

# ---------------------------------------------------------------- env file
load_env() {
    [[ -f "$DIR/env" ]] || return 1
    # shellcheck disable=SC1091
    source "$DIR/env"
}

write_env() {
    local users
    users=$(cut -d: -f1 "$DIR/users" | tr '\n' ',' | sed 's/,$//')
    cat >"$DIR/env.tmp" <<EOF
MAILWORLD_DIR=$DIR
SMTP_HOST=127.0.0.1
SMTP_PORT=$SMTP_PORT
IMAP_HOST=127.0.0.1
IMAP_PORT=$IMAP_PORT
IMAPS_PORT=$IMAPS_PORT
LMTP_PORT=$LMTP_PORT
DOMAIN=$DOMAIN
PROSPECT_DOMAIN=$PROSPECT_DOMAIN
PASSWORD=$PASSWORD
REP=rep@$DOMAIN
LI=li@$PROSPECT_DOMAIN
COLLEAGUE=colleague@$PROSPECT_DOMAIN
OOO=ooo@$PROSPECT_DOMAIN
UNKNOWN=unknown@$PROSPECT_DOMAIN
USERS=$users
POSTFIX_CONFIG=$PF_CONF
DOVECOT_CONFIG=$DC_CONF
POSTFIX_LOG=$DIR/postfix.log
DOVECOT_LOG=$DIR/dovecot.log
MAIL_ROOT=$DIR/mail
CA_FILE=$DIR/tls/ca.pem
EOF
    if [[ -n "${OAUTH2_URL:-}" ]]; then
        cat >>"$DIR/env.tmp" <<EOF
SUBMISSION_PORT=$SUBMISSION_PORT
SASL_PORT=$SASL_PORT
OAUTH2_URL=$OAUTH2_URL
EOF
    fi
    mv "$DIR/env.tmp" "$DIR/env"
}

# ---------------------------------------------------------------- config
add_user() { # ADDR
    local addr=$1 home
    [[ "$addr" =~ ^[a-z0-9._+-]+@(followup\.test|prospect\.test)$ ]] \
        || die "user must be LOCAL@followup.test or LOCAL@prospect.test: $addr"
    touch "$DIR/users"
    if ! cut -d: -f1 "$DIR/users" | grep -qxF "$addr"; then
        echo "$addr:{PLAIN}$PASSWORD::::::" >>"$DIR/users"
    fi
    home=$DIR/home/$addr
    mkdir -p "$home"
    chown "$MAIL_USER:$MAIL_USER" "$home"
}

write_configs() {
    local mail_uid
    mail_uid=$(id -u "$MAIL_USER")

    mkdir -p "$DIR" "$DC_BASE" "$DIR/state" "$DIR/mail" "$DIR/home" "$DIR/sieve" \
        "$PF_CONF" "$PF_QUEUE" "$PF_DATA"
    # The mail user (LMTP deliveries, IMAP sessions) must reach DIR/mail etc.
    chmod 0755 "$DIR"
    chown "$MAIL_USER:$MAIL_USER" "$DIR/mail" "$DIR/home" "$DIR/sieve"
    chown postfix:root "$PF_DATA"
    chmod 0700 "$PF_DATA"
    if ! runuser -u "$MAIL_USER" -- test -x "$DIR/mail" 2>/dev/null; then
        die "user $MAIL_USER cannot reach $DIR (a parent directory is not searchable); use a DIR under /tmp"
    fi

    local u
    for u in $BASE_USERS ${MAILWORLD_EXTRA_USERS:-}; do add_user "$u"; done

    # Dovecot offers STARTTLS with a certificate for 127.0.0.1 from a private CA
    # (CA_FILE), so that clients can test TLS as against a real server; plain
    # IMAP stays allowed.
    bash "$(dirname "${BASH_SOURCE[0]}")/pki.sh" "$DIR/tls"

    # ooo@prospect.test: a real out-of-office responder (RFC 5230 vacation).
    cat >"$DIR/sieve/ooo@$PROSPECT_DOMAIN.sieve" <<'EOF'
require ["vacation"];
vacation :days 1 :subject "Out of office"
"Hello,

Thank you for your message. I am out of the office with limited access to
email. I am back on 15 December.

Best regards,
Olivia (ooo@prospect.test)";
EOF
    chown "$MAIL_USER:$MAIL_USER" "$DIR/sieve/ooo@$PROSPECT_DOMAIN.sieve"

    # ------------------------------------------------------------ Dovecot
    cat >"$DC_CONF" <<EOF
# Generated by tests/support/mailworld.sh: a throw-away test server.
instance_name = mailworld$(echo "$DIR" | tr '/' '-')
protocols = imap lmtp
listen = 127.0.0.1
base_dir = $DC_BASE
state_dir = $DIR/state
log_path = $DIR/dovecot.log
log_timestamp = "%Y-%m-%d %H:%M:%S "
ssl = yes
ssl_cert = <$DIR/tls/server.pem
ssl_key = <$DIR/tls/server.key
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_username_format = %Lu
auth_failure_delay = 0
first_valid_uid = $mail_uid
last_valid_uid = $mail_uid
mail_location = maildir:$DIR/mail/%u
mail_max_userip_connections = 100
postmaster_address = postmaster@$DOMAIN
hostname = imap.mailworld.test
# Sieve redirects and vacation replies go out through this world's Postfix.
submission_host = 127.0.0.1:$SMTP_PORT

passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%Lu $DIR/users
}
userdb {
  driver = passwd-file
  args = username_format=%Lu $DIR/users
  default_fields = uid=$MAIL_USER gid=$MAIL_USER home=$DIR/home/%Lu
}

namespace inbox {
  inbox = yes
  separator = /
  mailbox Sent {
    special_use = \\Sent
    auto = subscribe
  }
  mailbox Drafts {
    special_use = \\Drafts
    auto = subscribe
  }
  mailbox Trash {
    special_use = \\Trash
    auto = subscribe
  }
  mailbox Junk {
    special_use = \\Junk
    auto = subscribe
  }
}

service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $IMAP_PORT
  }
  inet_listener imaps {
    address = 127.0.0.1
    port = $IMAPS_PORT
    ssl = yes
  }
}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = $LMTP_PORT
  }
}
protocol lmtp {
  mail_plugins = \$mail_plugins sieve
}
plugin {
  # One script file per user; a user without a file has no Sieve script.
  sieve = $DIR/sieve/%Lu.sieve
  sieve_vacation_send_from_recipient = no
}
EOF

    # ------------------------------------------------------------ Postfix
    cat >"$PF_CONF/main.cf" <<EOF
# Generated by tests/support/mailworld.sh: a throw-away test server.
compatibility_level = 3.6
queue_directory = $PF_QUEUE
data_directory = $PF_DATA
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.mailworld.test
mydomain = mailworld.test
myorigin = \$myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
maillog_file = $DIR/postfix.log
maillog_file_prefixes = $DIR
biff = no
append_dot_mydomain = no
smtpd_banner = \$myhostname ESMTP mailworld
smtpd_peername_lookup = no
disable_dns_lookups = yes
smtp_dns_support_level = disabled

# Nothing local, nothing relayed: only the two test domains, by LMTP to Dovecot.
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
relay_domains =
relayhost =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = reject_unauth_destination
virtual_mailbox_domains = $DOMAIN, $PROSPECT_DOMAIN
# No virtual_mailbox_maps on purpose: every recipient in the two domains is
# accepted at RCPT time, Dovecot's LMTP refuses unknown users (550 5.1.1) and
# Postfix bounces them with an RFC 3464 DSN to the envelope sender.
virtual_transport = lmtp:inet:127.0.0.1:$LMTP_PORT
default_transport = error:5.1.2 this test mail world delivers only to $DOMAIN and $PROSPECT_DOMAIN
relay_transport = \$default_transport

# Fast: no delay warnings, deferred mail (Dovecot down) retried within ~1-2 s.
delay_warning_time = 0
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
maximal_queue_lifetime = 1h
bounce_queue_lifetime = 1h
lmtp_connect_timeout = 5s
EOF

    cat >"$PF_CONF/master.cf" <<EOF
# Generated by tests/support/mailworld.sh. No chroot; the only listener is
# smtpd on 127.0.0.1:$SMTP_PORT.
# service type  private unpriv  chroot  wakeup  maxproc command
127.0.0.1:$SMTP_PORT inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
    if [[ -n "${OAUTH2_URL:-}" ]]; then write_oauth2_configs; fi
}

# The OAuth2 variant (MAILWORLD_OAUTH2_URL): bearer tokens checked by Dovecot's
# oauth2 passdb against the test's introspection URL, for IMAP and, through
# Dovecot's auth service, for Postfix's submission listener.
write_oauth2_configs() {
    cat >"$DIR/oauth2.conf.ext" <<EOF
introspection_mode = post
introspection_url = $OAUTH2_URL
force_introspection = yes
username_attribute = username
active_attribute = active
active_value = true
EOF
    sed -i 's/^auth_mechanisms = plain login$/auth_mechanisms = plain login xoauth2 oauthbearer/' "$DC_CONF"
    cat >>"$DC_CONF" <<EOF
# Tests refuse tokens on purpose, several in a row: no growing delay for that
# (Dovecot's auth penalty, up to 15 s per login from the same IP).
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
passdb {
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = $DIR/oauth2.conf.ext
}
service auth {
  inet_listener sasl {
    address = 127.0.0.1
    port = $SASL_PORT
  }
}
EOF
    cat >>"$PF_CONF/master.cf" <<EOF
127.0.0.1:$SUBMISSION_PORT inet n - n - - smtpd
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_sasl_type=dovecot
  -o smtpd_sasl_path=inet:127.0.0.1:$SASL_PORT
  -o smtpd_tls_security_level=none
  -o smtpd_client_restrictions=permit_sasl_authenticated,reject
  -o smtpd_error_sleep_time=0
EOF
}

# ---------------------------------------------------------------- start/stop
dovecot_start() {
    if dc_running; then return 0; fi
    # Output to a file, not $(...): the daemon keeps inherited fds open.
    if ! dovecot -c "$DC_CONF" >"$DIR/dovecot.start.out" 2>&1 </dev/null; then
        cat "$DIR/dovecot.start.out" >&2
        tail -n 20 "$DIR/dovecot.log" >&2 2>/dev/null || true
        return 1
    fi
    if ! wait_greets "$IMAP_PORT" '* OK' || ! wait_greets "$LMTP_PORT" '220'; then
        tail -n 20 "$DIR/dovecot.log" >&2 2>/dev/null || true
        echo "mailworld.sh: Dovecot did not answer on $IMAP_PORT/$LMTP_PORT" >&2
        return 1
    fi
}

# dovecot_stop [graceful|fast|kill]
#   graceful: `doveadm stop` and wait for every process (Dovecot's master sleeps
#             ~3 s in its own shutdown, mostly waiting for its log process)
#   fast:     SIGTERM to the master (what doveadm stop sends); once every child
#             but the log process is gone (sessions closed with "* BYE"),
#             SIGKILL the master and its log process
#   kill:     SIGKILL every process of this Dovecot at once (a crash)
dovecot_stop() {
    local mode=${1:-graceful} pid kids k left others
    pid=$(dc_pid)
    pid_alive "$pid" || { rm -f "$DC_BASE/master.pid"; return 0; }
    kids=$(descendants "$pid")
    case "$mode" in
    graceful)
        doveadm -c "$DC_CONF" stop >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null || true
        # shellcheck disable=SC2086
        if ! left=$(wait_gone 15 "$pid" $kids); then
            # shellcheck disable=SC2086
            kill -KILL $left 2>/dev/null || true
        fi
        ;;
    fast)
        kill -TERM "$pid" 2>/dev/null || true
        others=""
        local title
        for k in $kids; do
            title=$(tr '\0' ' ' 2>/dev/null <"/proc/$k/cmdline" || true)
            title=${title%"${title##*[! ]}"}
            [[ "$title" == */log ]] || others+=" $k"
        done
        # shellcheck disable=SC2086
        wait_gone 3 $others >/dev/null || true
        # shellcheck disable=SC2086
        kill -KILL "$pid" $kids 2>/dev/null || true
        # shellcheck disable=SC2086
        wait_gone 5 "$pid" $kids >/dev/null || true
        ;;
    kill)
        # shellcheck disable=SC2086
        kill -KILL "$pid" $kids 2>/dev/null || true
        # shellcheck disable=SC2086
        wait_gone 5 "$pid" $kids >/dev/null || true
        ;;
    esac
    rm -f "$DC_BASE/master.pid"
}

postfix_start() {
    if pf_running; then return 0; fi
    # `postfix` waits ~2 s when main.cf/master.cf were modified within the
    # last seconds; ours are generated, so date them in the past.
    touch -d '-1 minute' "$PF_CONF/main.cf" "$PF_CONF/master.cf"
    if ! postfix -c "$PF_CONF" start >"$DIR/postfix.start.out" 2>&1 </dev/null; then
        cat "$DIR/postfix.start.out" >&2
        tail -n 20 "$DIR/postfix.log" >&2 2>/dev/null || true
        return 1
    fi
    if ! wait_greets "$SMTP_PORT" '220'; then
        tail -n 20 "$DIR/postfix.log" >&2 2>/dev/null || true
        echo "mailworld.sh: Postfix did not answer on $SMTP_PORT" >&2
        return 1
    fi
}

postfix_stop() {
    local pid kids left
    pid=$(pf_pid)
    pid_alive "$pid" || return 0
    kids=$(descendants "$pid")
    postfix -c "$PF_CONF" stop >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null || true
    # shellcheck disable=SC2086
    if ! left=$(wait_gone 10 "$pid" $kids); then
        # shellcheck disable=SC2086
        kill -KILL $left 2>/dev/null || true
    fi
}

need_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (Postfix's master starts as root; Dovecot switches to the mail user)"
    local b
    for b in postfix postconf dovecot doveadm runuser; do
        command -v "$b" >/dev/null || die "$b not found (apt-get install postfix dovecot-imapd dovecot-lmtpd dovecot-sieve)"
    done
    [[ -f /usr/lib/dovecot/modules/lib90_sieve_plugin.so ]] || die "Sieve plugin missing (apt-get install dovecot-sieve)"
    [[ -x /usr/lib/dovecot/lmtp ]] || die "Dovecot LMTP missing (apt-get install dovecot-lmtpd)"
    [[ -x /usr/lib/dovecot/imap ]] || die "Dovecot IMAP missing (apt-get install dovecot-imapd)"
}

case "$cmd" in
start)
    need_root
    if load_env 2>/dev/null && pf_running && dc_running; then
        cat "$DIR/env"
        exit 0
    fi
    # Partly running (a crash, or stop-imap): stop what runs, start afresh.
    if [[ -f "$DIR/env" ]]; then load_env; postfix_stop; dovecot_stop fast; fi
    trap release_ports EXIT
    # Reuse the ports of a previous run of this DIR when they are free.
    want_smtp=${SMTP_PORT:-} want_imap=${IMAP_PORT:-} want_lmtp=${LMTP_PORT:-}
    want_imaps=${IMAPS_PORT:-}
    started=0
    for attempt in 1 2 3; do
        SMTP_PORT=$(pick_port "$want_smtp")
        RESERVED+=("$PORT_LOCKS/$SMTP_PORT")
        IMAP_PORT=$(pick_port "$want_imap")
        RESERVED+=("$PORT_LOCKS/$IMAP_PORT")
        IMAPS_PORT=$(pick_port "$want_imaps")
        RESERVED+=("$PORT_LOCKS/$IMAPS_PORT")
        LMTP_PORT=$(pick_port "$want_lmtp")
        RESERVED+=("$PORT_LOCKS/$LMTP_PORT")
        OAUTH2_URL=${MAILWORLD_OAUTH2_URL:-}
        if [[ -n "$OAUTH2_URL" ]]; then
            SUBMISSION_PORT=$(pick_port)
            RESERVED+=("$PORT_LOCKS/$SUBMISSION_PORT")
            SASL_PORT=$(pick_port)
            RESERVED+=("$PORT_LOCKS/$SASL_PORT")
        fi
        write_configs
        write_env
        if dovecot_start && postfix_start; then started=1; break; fi
        postfix_stop
        dovecot_stop kill
        release_ports
        want_smtp="" want_imap="" want_lmtp="" want_imaps=""
        echo "mailworld.sh: start attempt $attempt failed; trying other ports" >&2
    done
    [[ $started -eq 1 ]] || die "could not start the mail world in $DIR (see $DIR/dovecot.log, $DIR/postfix.log)"
    release_ports
    cat "$DIR/env"
    ;;
stop)
    [[ -d "$DIR" ]] || exit 0
    load_env 2>/dev/null || true
    postfix_stop &
    dovecot_stop "${3:-fast}"
    wait
    ;;
restart-imap)
    need_root
    load_env || die "no world in $DIR"
    dovecot_stop
    dovecot_start || die "Dovecot failed to restart (see $DIR/dovecot.log)"
    ;;
stop-imap)
    load_env || die "no world in $DIR"
    dovecot_stop "${3:-graceful}"
    ;;
kill-imap)
    load_env || die "no world in $DIR"
    dovecot_stop kill
    ;;
start-imap)
    need_root
    load_env || die "no world in $DIR"
    dovecot_start || die "Dovecot failed to start (see $DIR/dovecot.log)"
    ;;
add-user)
    load_env || die "no world in $DIR"
    [[ -n "${3:-}" ]] || usage
    add_user "$3"
    write_env
    ;;
status)
    load_env 2>/dev/null && pf_running && dc_running || { echo "not running" >&2; exit 3; }
    cat "$DIR/env"
    ;;
env)
    load_env || die "no world in $DIR"
    cat "$DIR/env"
    ;;
queue)
    n=0
    for q in maildrop incoming active deferred hold; do
        if [[ -d "$PF_QUEUE/$q" ]]; then
            n=$(( n + $(find "$PF_QUEUE/$q" -type f | wc -l) ))
        fi
    done
    echo "$n"
    ;;
*)
    usage
    ;;
esac
