#!/usr/bin/env python3
"""A real SMTP server for followup's integration tests (built on aiosmtpd).

Usage:
    python3 tests/support/smtpd.py --dir DIR [--mode accept|tempfail-first|reject|slow|hangup-once]
                                   [--port 0] [--auth user:password]
                                   [--exit-on-stdin-eof]

It binds 127.0.0.1 (port 0 = any free port). Once listening it prints exactly
one line `PORT <n>` to stdout and flushes; nothing else is ever written to
stdout (diagnostics go to stderr).

Every accepted message is written to DIR/<seq:06>.eml (seq counts accepted
messages from 1). The file is written under a temporary name and renamed, so
a reader never sees a partial file. Its content is:

    X-Envelope-From: <MAIL FROM address, bare, "" for the null sender>\r\n
    X-Envelope-To: <RCPT TO address, bare>\r\n     (one line per recipient)
    <the message bytes exactly as received after dot-unstuffing, CRLF kept>

Every DATA transaction (accepted or not) appends one JSON line to
DIR/log.jsonl, after the .eml file (if any) has been renamed into place:

    {"seq": n | null, "txn": t, "at": unix-seconds-float, "from": "...",
     "to": ["..."], "result": "250" | "451" | "550",
     "message_id": "<...>" | null, "auth": "user" | null, "tls": bool}

"seq" is the number of the .eml file (null when the message was not
accepted); "txn" counts all DATA transactions from 1; "at" is taken when DATA
ends; "message_id" is the Message-ID header value (stripped, unfolded), or
null; "auth" is the login the session authenticated as, or null; "tls" says
whether the message came over TLS (implicit or after STARTTLS).

Modes:
    accept          every DATA gets 250.
    tempfail-first  the first DATA of each distinct Message-ID gets
                    "451 4.3.0 Try again later"; later attempts with the same
                    Message-ID are accepted. A message without a Message-ID
                    is accepted.
    reject          every DATA gets
                    "550 5.1.1 <rcpt>: Recipient address rejected: User unknown"
                    (rcpt = the first recipient).

--auth user:password advertises AUTH PLAIN and LOGIN without TLS and requires
a successful AUTH before MAIL FROM (530 otherwise); wrong credentials get 535.

--tls starttls|implicit with --cert FILE --key FILE (PEM): `starttls` offers
STARTTLS and refuses MAIL FROM (and AUTH) before it; `implicit` speaks TLS from
the first byte (smtps). With --auth and starttls, AUTH is offered only after
STARTTLS.

--exit-on-stdin-eof: also exit when stdin reaches EOF, so a test that spawns
the server with a piped stdin does not leak it if the test process dies.

SIGTERM and SIGINT stop the server cleanly (exit status 0).
"""

import argparse
import asyncio
import json
import logging
import os
import signal
import ssl
import sys
import time
import warnings
from email.parser import BytesHeaderParser
from email.policy import compat32

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


def message_id_of(content: bytes):
    try:
        headers = BytesHeaderParser(policy=compat32).parsebytes(content, headersonly=True)
        value = headers.get("Message-ID")
    except Exception:  # a malformed message is still logged
        return None
    if value is None:
        return None
    value = " ".join(str(value).split())
    return value or None


class Handler:
    def __init__(self, directory: str, mode: str):
        self.dir = directory
        self.mode = mode
        self.seq = 0
        self.txn = 0
        self.seen_ids = set()
        self.log_path = os.path.join(directory, "log.jsonl")

    async def handle_DATA(self, server, session, envelope):
        if self.mode == "slow":
            # A server that takes its time over each message (a remote relay under
            # load), so that tests can act while later messages wait their turn.
            await asyncio.sleep(1.5)
        at = time.time()
        content = envelope.original_content
        if content is None:
            content = envelope.content
        if isinstance(content, str):
            content = content.encode("utf-8", errors="surrogateescape")
        mail_from = envelope.mail_from or ""
        if mail_from == "<>":  # the null sender
            mail_from = ""
        rcpts = list(envelope.rcpt_tos)
        message_id = message_id_of(content)

        if self.mode == "reject":
            result = "550"
            reply = "550 5.1.1 <%s>: Recipient address rejected: User unknown" % (
                rcpts[0] if rcpts else ""
            )
        elif self.mode == "tempfail-first" and message_id is not None and message_id not in self.seen_ids:
            self.seen_ids.add(message_id)
            result = "451"
            reply = "451 4.3.0 Try again later"
        else:
            result = "250"
            reply = None

        self.txn += 1
        seq = None
        if result == "250":
            self.seq += 1
            seq = self.seq
            name = "%06d.eml" % seq
            tmp = os.path.join(self.dir, ".%s.tmp" % name)
            with open(tmp, "wb") as f:
                f.write(b"X-Envelope-From: " + mail_from.encode("utf-8", "surrogateescape") + b"\r\n")
                for r in rcpts:
                    f.write(b"X-Envelope-To: " + r.encode("utf-8", "surrogateescape") + b"\r\n")
                f.write(content)
            os.rename(tmp, os.path.join(self.dir, name))
            reply = "250 2.0.0 Ok: queued as %06d" % seq

        auth = getattr(session, "auth_data", None)
        if isinstance(auth, bytes):
            auth = auth.decode("utf-8", "replace")
        elif auth is not None and not isinstance(auth, str):
            auth = str(auth)
        entry = {
            "seq": seq,
            "txn": self.txn,
            "at": at,
            "from": mail_from,
            "to": rcpts,
            "result": result,
            "message_id": message_id,
            "auth": auth,
            "tls": server.transport.get_extra_info("ssl_object") is not None,
        }
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        # One write per line, so a concurrent reader sees whole lines.
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode("utf-8", "surrogateescape"))
        finally:
            os.close(fd)
        if self.mode == "hangup-once" and result == "250" and self.seq == 1:
            # Takes the first message, then hangs up instead of answering its end of
            # data: the client cannot know that it was taken.
            server.transport.abort()
        return reply


class Authenticator:
    def __init__(self, user: str, password: str):
        self.user = user.encode("utf-8")
        self.password = password.encode("utf-8")

    def __call__(self, server, session, envelope, mechanism, auth_data):
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        if auth_data.login == self.user and auth_data.password == self.password:
            return AuthResult(success=True, auth_data=auth_data.login.decode("utf-8", "replace"))
        return AuthResult(success=False, handled=False)


async def main_async(args) -> int:
    os.makedirs(args.dir, exist_ok=True)
    handler = Handler(args.dir, args.mode)
    smtp_kwargs = dict(
        decode_data=False,
        enable_SMTPUTF8=True,
        hostname="followup-test-smtpd",
        ident="followup test smtpd",
    )
    tls_context = None
    if args.tls is not None:
        if not (args.cert and args.key):
            print("smtpd.py: --tls wants --cert and --key", file=sys.stderr)
            return 2
        tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls_context.load_cert_chain(args.cert, args.key)
        if args.tls == "starttls":
            smtp_kwargs.update(tls_context=tls_context, require_starttls=True)
    if args.auth is not None:
        user, sep, password = args.auth.partition(":")
        if not sep:
            print("smtpd.py: --auth wants user:password", file=sys.stderr)
            return 2
        smtp_kwargs.update(
            authenticator=Authenticator(user, password),
            auth_required=True,
            # aiosmtpd sees TLS only when it came by STARTTLS; with implicit TLS the
            # whole connection is encrypted anyway.
            auth_require_tls=args.tls == "starttls",
        )

    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, **smtp_kwargs),
        host="127.0.0.1",
        port=args.port,
        ssl=tls_context if args.tls == "implicit" else None,
    )
    port = server.sockets[0].getsockname()[1]
    sys.stdout.write("PORT %d\n" % port)
    sys.stdout.flush()

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    if args.exit_on_stdin_eof:
        def on_stdin():
            try:
                data = os.read(0, 4096)
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(0)
                stop.set()

        loop.add_reader(0, on_stdin)

    await stop.wait()
    server.close()
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description="SMTP server for followup's integration tests")
    p.add_argument("--dir", required=True, help="where .eml files and log.jsonl are written")
    p.add_argument("--mode", choices=["accept", "tempfail-first", "reject", "slow", "hangup-once"], default="accept")
    p.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0 = any free port)")
    p.add_argument("--auth", metavar="USER:PASSWORD", default=None,
                   help="require AUTH PLAIN/LOGIN with these credentials")
    p.add_argument("--tls", choices=["starttls", "implicit"], default=None,
                   help="STARTTLS (required before MAIL) or TLS from the first byte")
    p.add_argument("--cert", default=None, help="PEM certificate chain for --tls")
    p.add_argument("--key", default=None, help="PEM private key for --tls")
    p.add_argument("--exit-on-stdin-eof", action="store_true",
                   help="exit when stdin is closed")
    args = p.parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.ERROR)
    # aiosmtpd warns that auth without TLS is insecure: intended here.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
    try:
        return asyncio.run(main_async(args))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
