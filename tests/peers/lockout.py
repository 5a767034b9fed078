#!/usr/bin/env python3
"""A flood of wrong credentials that names one real account, and that
account's first login in the middle of it, on 127.0.0.1.

  lockout.py --pid PID --smtp PORT --http PORT --user U --password P
             --token NAME:TOKEN [--seconds S] [--smtp-clients N]
             [--http-clients M] [--generated G] [--login-after T]

The flood: N SMTP clients send wrong AUTH PLAIN for U (three a session,
then reconnect) and M HTTP clients send wrong bearer tokens for U
(GET /v1/fetches/x, one a connection), for S seconds at most. Every other
wrong secret has the shape of a generated one (`dust.` and 32 letters);
the rest look like human passwords. With G, the flood ends once G
generated-shaped wrong secrets have been answered (or at S). T seconds into the flood (default 1) the account logs in for the
first time: SMTP (smtplib: AUTH, one message) and HTTP (its token: 404 for
a job that does not exist means authenticated, 401 would be refused),
each timed from its first try; then again every half second until the
flood ends. Prints one JSON object: the first logins' seconds, the later
ones' latencies and any failures, per side the flood's answers by code and
by shape, how many wrong secrets were accepted (must be none), the mote's
peak RSS (KiB) and its CPU seconds during the flood."""
import argparse
import asyncio
import base64
import collections
import json
import os
import secrets
import smtplib
import string
import threading
import time
import urllib.error
import urllib.request

from greet import ehlo

LETTERS = string.ascii_letters + string.digits


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Flood:
    """Counts of the flood's answers; hands out wrong secrets."""

    def __init__(self, generated_cap):
        self.cap = generated_cap
        self.generated_sent = 0
        self.answers = {"smtp": collections.Counter(), "http": collections.Counter()}
        self.accepted = []

    def done(self, deadline):
        """Whether the flood is over: its time is up, or G generated-shaped
        wrong secrets were answered."""
        if time.monotonic() >= deadline:
            return True
        if self.cap is None:
            return False
        answered = sum(
            v for c in self.answers.values() for k, v in c.items() if k.startswith("generated ")
        )
        return answered >= self.cap

    def wrong(self, i):
        """A wrong secret: generated-shaped every other time, else
        human-shaped. (shape, secret)"""
        if i % 2 == 0:
            self.generated_sent += 1
            return "generated", "dust." + "".join(secrets.choice(LETTERS) for _ in range(32))
        return "human", "wrong-password-" + secrets.token_hex(4)

    def book(self, side, shape, code):
        self.answers[side][f"{shape} {code}"] += 1


async def smtp_client(a, flood, deadline, n):
    k = n
    while not flood.done(deadline):
        try:
            session = await ehlo(a.smtp, "flood.invalid")
            if session is None:
                await asyncio.sleep(0.05)
                continue
            r, w = session
            for _ in range(3):
                k += 1
                shape, secret = flood.wrong(k)
                cred = base64.b64encode(f"\0{a.user}\0{secret}".encode()).decode()
                w.write(f"AUTH PLAIN {cred}\r\n".encode())
                line = await asyncio.wait_for(r.readline(), max(0.1, deadline - time.monotonic()))
                code = line[:3].decode(errors="replace") or "closed"
                flood.book("smtp", shape, code)
                if code == "235":
                    flood.accepted.append(("smtp", secret))
                if code != "535" or flood.done(deadline):
                    break
            w.close()
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            await asyncio.sleep(0.05)


async def http_client(a, flood, deadline, n):
    k = n
    while not flood.done(deadline):
        k += 1
        shape, secret = flood.wrong(k)
        try:
            r, w = await asyncio.open_connection("127.0.0.1", a.http)
            w.write(
                f"GET /v1/fetches/x HTTP/1.1\r\nHost: m\r\nAuthorization: Bearer {a.user}:{secret}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            await w.drain()
            head = await asyncio.wait_for(r.readline(), max(0.1, deadline - time.monotonic()))
            w.close()
            parts = head.split()
            code = parts[1].decode() if len(parts) > 1 else "closed"
            flood.book("http", shape, code)
            if code not in ("401", "429", "503"):
                flood.accepted.append(("http", code, secret))
        except (OSError, asyncio.TimeoutError):
            await asyncio.sleep(0.05)


def smtp_login(a):
    t0 = time.monotonic()
    with smtplib.SMTP("127.0.0.1", a.smtp, timeout=10) as s:
        s.ehlo("real.invalid")
        s.login(a.user, a.password)
        dt = time.monotonic() - t0
        # Each message its own (the mote suppresses replays of one).
        body = f"Subject: login {time.time()} {secrets.token_hex(8)}\r\n\r\nhello\r\n"
        s.sendmail("real@example.org", ["friend@example.net"], body.encode())
    return dt


def http_login(a):
    t0 = time.monotonic()
    req = urllib.request.Request(
        f"http://127.0.0.1:{a.http}/v1/fetches/does-not-exist",
        headers={"Authorization": f"Bearer {a.token}"},
    )
    try:
        urllib.request.urlopen(req, timeout=10)
        code = 200
    except urllib.error.HTTPError as e:
        code = e.code
    if code != 404:
        raise RuntimeError(f"HTTP {code} for the right token")
    return time.monotonic() - t0


def real_user(a, start, deadline, over, out):
    """The first logins at `start`, then every half second until `deadline`
    or until the flood is `over`."""
    time.sleep(max(0.0, start - time.monotonic()))
    first = True
    while True:
        for side, login in (("smtp", smtp_login), ("http", http_login)):
            try:
                dt = login(a)
            except Exception as e:  # noqa: BLE001 - every failure is counted
                out["failures"].append(f"{side}: {type(e).__name__}: {e}")
                dt = None
            if first:
                out["first"][side] = dt
            elif dt is not None:
                out["later"][side].append(dt)
        first = False
        if time.monotonic() + 0.5 >= deadline or over.is_set():
            return
        time.sleep(0.5)


async def flood_for(a, flood, deadline):
    await asyncio.gather(
        *(smtp_client(a, flood, deadline, i * 1_000_000) for i in range(a.smtp_clients)),
        *(http_client(a, flood, deadline, i * 1_000_000 + 1) for i in range(a.http_clients)),
    )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--smtp", type=int, required=True)
    p.add_argument("--http", type=int, required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--smtp-clients", type=int, default=30)
    p.add_argument("--http-clients", type=int, default=100)
    p.add_argument("--generated", type=int, default=None)
    p.add_argument("--login-after", type=float, default=1.0)
    a = p.parse_args()

    flood = Flood(a.generated)
    real = {"first": {}, "later": {"smtp": [], "http": []}, "failures": []}
    peak = [rss_kib(a.pid)]
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_kib(a.pid))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    cpu0, t0 = cpu_seconds(a.pid), time.monotonic()
    deadline = t0 + a.seconds
    over = threading.Event()
    user = threading.Thread(target=real_user, args=(a, t0 + a.login_after, deadline, over, real))
    user.start()
    asyncio.run(flood_for(a, flood, deadline))
    seconds = time.monotonic() - t0
    cpu = cpu_seconds(a.pid) - cpu0
    over.set()
    user.join()
    stop.set()
    watcher.join()
    sides = {}
    for side, c in flood.answers.items():
        sides[side] = {
            "answers": dict(c),
            "generated_answered": sum(v for k, v in c.items() if k.startswith("generated ")),
            "human_answered": sum(v for k, v in c.items() if k.startswith("human ")),
        }
        sides[side]["generated_per_s"] = sides[side]["generated_answered"] / seconds
    print(json.dumps({
        "seconds": seconds,
        "cpu_seconds": cpu,
        "peak_rss_kib": peak[0],
        "generated_sent": flood.generated_sent,
        "accepted": flood.accepted,
        "real": real,
        **sides,
    }))


main()
