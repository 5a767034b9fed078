#!/usr/bin/env python3
"""A receiving MTA for the tests: aiosmtpd, writing each message it accepts
to DIR as N.eml (the DATA bytes as received) plus N.json (envelope and
arrival time). Files appear atomically (written, then renamed)."""
import argparse
import json
import os
import signal
import ssl
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult


class Store:
    def __init__(self, directory, reject_first, reject_reply):
        self.dir = directory
        self.n = 0
        self.reject_first = reject_first
        self.reject_reply = reject_reply

    async def handle_DATA(self, server, session, envelope):
        if self.reject_first > 0:
            self.reject_first -= 1
            return self.reject_reply
        self.n += 1
        base = os.path.join(self.dir, f"{os.getpid()}-{self.n:06d}")
        with open(base + ".eml.tmp", "wb") as f:
            f.write(envelope.original_content)
        with open(base + ".json.tmp", "w") as f:
            json.dump({"mail_from": envelope.mail_from, "rcpt_tos": envelope.rcpt_tos,
                       "time": time.time(), "peer": session.peer[0],
                       "helo": session.host_name,
                       "mail_options": envelope.mail_options}, f)
        os.rename(base + ".eml.tmp", base + ".eml")
        os.rename(base + ".json.tmp", base + ".json")
        return "250 2.0.0 Ok: stored"


class Auth:
    def __init__(self, user, password):
        self.user, self.password = user.encode(), password.encode()

    def __call__(self, server, session, envelope, mechanism, auth_data):
        ok = (mechanism in ("PLAIN", "LOGIN") and auth_data.login == self.user
              and auth_data.password == self.password)
        return AuthResult(success=ok)


def server_tls(cert, key):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--reject-first", type=int, default=0,
                   help="refuse the first N messages (see --reject-reply)")
    p.add_argument("--reject-reply", default="451 4.3.0 test sink: try again later")
    p.add_argument("--starttls", nargs=2, metavar=("CERT", "KEY"),
                   help="offer STARTTLS and require it before MAIL")
    p.add_argument("--implicit-tls", nargs=2, metavar=("CERT", "KEY"),
                   help="TLS from the first byte (like port 465)")
    p.add_argument("--auth", metavar="USER:PASSWORD", help="require AUTH PLAIN/LOGIN")
    p.add_argument("--no-smtputf8", action="store_true", help="do not offer SMTPUTF8")
    a = p.parse_args()
    kw = {"enable_SMTPUTF8": not a.no_smtputf8}
    if a.starttls:
        kw.update(tls_context=server_tls(*a.starttls), require_starttls=True)
    if a.implicit_tls:
        kw.update(ssl_context=server_tls(*a.implicit_tls))
    if a.auth:
        user, password = a.auth.split(":", 1)
        kw.update(authenticator=Auth(user, password), auth_required=True,
                  # aiosmtpd does not see implicit TLS as TLS; the connection is TLS anyway.
                  auth_require_tls=bool(a.starttls))
    c = Controller(Store(a.dir, a.reject_first, a.reject_reply), hostname="127.0.0.1", port=a.port,
                   decode_data=False, data_size_limit=64 * 1024 * 1024, **kw)
    c.start()
    print("ready", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    c.stop()


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    main()
