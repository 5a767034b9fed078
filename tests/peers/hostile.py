#!/usr/bin/env python3
"""Hostile load against a mote on 127.0.0.1, phase by phase, while a real
user keeps submitting mail; watches the mote's memory and threads.

  hostile.py --pid PID --smtp PORT --http PORT --user U --password P
             [--seconds S] [--scale F]

Phases (each S seconds, every loop bounded in time and count):
  junk_tokens  300 concurrent HTTP clients, GET /v1/fetches/x with junk
               bearer tokens (each a new argon2 candidate)
  wrong_auth   60 concurrent SMTP clients sending wrong AUTH PLAIN,
               reconnecting when closed
  idle_slots   300 connections that greet and send NOOP now and then
  slow_bodies  100 HTTP POSTs whose bodies trickle one byte a second
The real user (correct password) sends one message per second through
smtplib in every phase from three seconds into it, and once before the
first. Prints one JSON object:
per phase the real user's latencies (s) and failures, and the mote's peak
RSS (KiB) and thread count; --scale multiplies the attacker counts."""
import argparse
import asyncio
import base64
import json
import os
import smtplib
import threading
import time

from greet import ehlo


def proc_status(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                out[k] = v.strip()
    except OSError:
        pass
    rss = int(out.get("VmRSS", "0 kB").split()[0])
    threads = int(out.get("Threads", "0"))
    return rss, threads


class Watch:
    """Samples RSS and threads every 50 ms in a thread."""

    def __init__(self, pid):
        self.pid, self.rss, self.threads, self.stop = pid, 0, 0, False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop:
            rss, threads = proc_status(self.pid)
            self.rss, self.threads = max(self.rss, rss), max(self.threads, threads)
            time.sleep(0.05)

    def reset(self):
        self.rss, self.threads = proc_status(self.pid)


def real_user(a, deadline, results):
    """One submission per second until the deadline; latencies in seconds.
    Like any mail client, a submission refused with a temporary error
    (4xx) is tried again, up to 3 times half a second apart; the latency
    counts from the first try."""
    n = 0
    while time.monotonic() < deadline:
        n += 1
        t0 = time.monotonic()
        msg = f"Subject: real {os.getpid()} {time.time()} {n}\r\n\r\nreal user\r\n"
        error = None
        for _ in range(3):
            try:
                with smtplib.SMTP("127.0.0.1", a.smtp, timeout=30) as s:
                    s.ehlo("real.invalid")
                    s.login(a.user, a.password)
                    s.sendmail("real@example.org", ["friend@example.net"], msg.encode())
                error = None
                break
            except smtplib.SMTPResponseException as e:
                error = f"{type(e).__name__}: {e}"
                if not 400 <= e.smtp_code < 500:
                    break
                time.sleep(0.5)
            except Exception as e:  # noqa: BLE001 - any failure is what we count
                error = f"{type(e).__name__}: {e}"
                break
        if error is None:
            results["latency"].append(time.monotonic() - t0)
        else:
            results["failures"].append(error)
        time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))


async def junk_tokens(a, deadline):
    async def one(i):
        k = 0
        while time.monotonic() < deadline and k < 10_000:
            k += 1
            try:
                r, w = await asyncio.open_connection("127.0.0.1", a.http)
                tok = base64.b64encode(os.urandom(24)).decode()
                w.write(f"GET /v1/fetches/x HTTP/1.1\r\nHost: m\r\nAuthorization: Bearer {a.user}:{tok}\r\nConnection: close\r\n\r\n".encode())
                await w.drain()
                await asyncio.wait_for(r.read(), timeout=max(0.1, deadline - time.monotonic()))
                w.close()
            except (OSError, asyncio.TimeoutError):
                await asyncio.sleep(0.05)
    await asyncio.gather(*(one(i) for i in range(int(300 * a.scale))))


async def wrong_auth(a, deadline):
    wrong = base64.b64encode(f"\0{a.user}\0wrong-password".encode()).decode()

    async def one(i):
        k = 0
        while time.monotonic() < deadline and k < 10_000:
            k += 1
            try:
                session = await ehlo(a.smtp, "x")
                if session is None:
                    continue
                r, w = session
                for _ in range(3):
                    w.write(f"AUTH PLAIN {wrong}\r\n".encode())
                    line = await asyncio.wait_for(r.readline(), max(0.1, deadline - time.monotonic()))
                    if not line or line.startswith(b"421"):
                        break
                w.close()
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                await asyncio.sleep(0.05)
    await asyncio.gather(*(one(i) for i in range(int(60 * a.scale))))


async def idle_slots(a, deadline):
    async def one(i):
        try:
            r, w = await asyncio.open_connection("127.0.0.1", a.smtp)
            await asyncio.wait_for(r.readline(), 5)
            while time.monotonic() < deadline:
                w.write(b"NOOP\r\n")
                line = await asyncio.wait_for(r.readline(), 5)
                if not line or line.startswith(b"421"):
                    return
                await asyncio.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
        except (OSError, asyncio.TimeoutError):
            return
    await asyncio.gather(*(one(i) for i in range(int(300 * a.scale))))


async def slow_bodies(a, deadline):
    async def one(i):
        try:
            r, w = await asyncio.open_connection("127.0.0.1", a.http)
            w.write(f"POST /v1/fetches HTTP/1.1\r\nHost: m\r\nAuthorization: Bearer {a.user}:wrong\r\nContent-Length: 1000\r\n\r\n".encode())
            while time.monotonic() < deadline:
                w.write(b"{")
                await w.drain()
                await asyncio.sleep(1.0)
        except OSError:
            return
    await asyncio.gather(*(one(i) for i in range(int(100 * a.scale))))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--smtp", type=int, required=True)
    p.add_argument("--http", type=int, required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--scale", type=float, default=1.0)
    a = p.parse_args()
    watch = Watch(a.pid)
    out = {"baseline_rss_kib": proc_status(a.pid)[0]}
    # The real user logs in once before the attacks.
    warm = {"latency": [], "failures": []}
    real_user(a, time.monotonic() + 0.5, warm)
    out["before"] = {"latency": warm["latency"], "failures": warm["failures"]}
    for name, attack in [("junk_tokens", junk_tokens), ("wrong_auth", wrong_auth),
                         ("idle_slots", idle_slots), ("slow_bodies", slow_bodies)]:
        watch.reset()
        deadline = time.monotonic() + a.seconds
        results = {"latency": [], "failures": []}

        def user_during_attack():
            # The real user comes three seconds into the attack, when it is
            # under way (a session that just connected is protected from
            # eviction for two seconds, so a burst of strangers is refused
            # for that long), not in the very burst that starts it.
            time.sleep(3.0)
            real_user(a, deadline, results)

        user = threading.Thread(target=user_during_attack)
        user.start()
        asyncio.run(attack(a, deadline))
        user.join()
        out[name] = {**results, "peak_rss_kib": watch.rss, "peak_threads": watch.threads}
    watch.stop = True
    print(json.dumps(out))


main()
