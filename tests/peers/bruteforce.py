#!/usr/bin/env python3
"""Password and token guessing against a mote with many accounts, on
127.0.0.1, while a real account keeps authenticating.

  bruteforce.py --pid PID --smtp PORT --http PORT --names FILE
                --user U --password P --token NAME:TOKEN
                [--attempts N] [--concurrency C] [--deadline S] [--rate R]

N wrong SMTP passwords (AUTH PLAIN, cycling over the names in FILE, one per
line; a session is reopened whenever the mote closes it) and N wrong HTTP
bearer tokens (GET /v1/fetches/x), each side with C concurrent clients,
bounded by N and by S seconds; with --rate, at most R attempts a second a
side (paced from the start), else as fast as the mote answers. Meanwhile the real account U, which has
used the mote before (it authenticates once before the attack), does so
again over SMTP (P) and HTTP (its token) every half second. With
--fresh-user/--fresh-password, another account tries its first login ever
--fresh-after seconds (default 60) into the attack (reported, not judged: before any success its
right password and a guess look the same). Prints one JSON object:
per side how many attempts were answered by a verification (SMTP 535, HTTP
401) and how many were turned away before one (454 / 429, or the session
closed), the most verified attempts for one name in any 60-second window,
the mote's CPU seconds during the attack, and the real account's latencies
and failures."""
import argparse
import asyncio
import base64
import collections
import json
import os
import time


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Side:
    def __init__(self, rate):
        self.rate, self.t0 = rate, time.monotonic()
        self.attempts = 0
        self.verified = 0
        self.turned_away = 0
        self.other = collections.Counter()
        self.by_name = collections.defaultdict(list)

    async def next(self):
        """Count one attempt; with a rate, wait for its turn."""
        n = self.attempts
        self.attempts += 1
        if self.rate:
            await asyncio.sleep(max(0.0, self.t0 + n / self.rate - time.monotonic()))

    def book(self, name, code, verified, turned_away):
        """Count an answer: `verified` (a verification said no) or
        `turned_away` (refused before one); anything else goes to `other`
        and gives False."""
        if code == verified:
            self.verified += 1
            self.by_name[name].append(time.monotonic())
        elif code == turned_away:
            self.turned_away += 1
        else:
            self.other[code.decode(errors="replace") or "closed"] += 1
            return False
        return True

    def window_max(self):
        """Most verified attempts for one name in any 60 s window."""
        best = 0
        for times in self.by_name.values():
            times.sort()
            j = 0
            for i, t in enumerate(times):
                while times[j] < t - 60:
                    j += 1
                best = max(best, i - j + 1)
        return best

    def json(self):
        return {
            "attempts": self.attempts,
            "verified": self.verified,
            "turned_away": self.turned_away,
            "other": dict(self.other),
            "names_verified": len(self.by_name),
            "max_verified_per_name_per_minute": self.window_max(),
        }


async def smtp_attacker(a, names, side, budget, deadline):
    async def one(i):
        k = i
        while side.attempts < budget and time.monotonic() < deadline:
            try:
                r, w = await asyncio.open_connection("127.0.0.1", a.smtp)
                await asyncio.wait_for(r.readline(), 10)
                w.write(b"EHLO guesser.invalid\r\n")
                line = b"250-"
                while line.startswith(b"250-"):
                    line = await asyncio.wait_for(r.readline(), 10)
                while side.attempts < budget and time.monotonic() < deadline:
                    name = names[k % len(names)]
                    k += 7
                    creds = base64.b64encode(f"\0{name}\0guess-{os.urandom(6).hex()}".encode()).decode()
                    await side.next()
                    w.write(f"AUTH PLAIN {creds}\r\n".encode())
                    line = await asyncio.wait_for(r.readline(), 30)
                    if not side.book(name, line[:3], b"535", b"454"):
                        break
                w.close()
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                side.other["error"] += 1
                await asyncio.sleep(0.05)

    await asyncio.gather(*(one(i) for i in range(a.concurrency)))


async def http_attacker(a, names, side, budget, deadline):
    async def one(i):
        k = i
        while side.attempts < budget and time.monotonic() < deadline:
            name = names[k % len(names)]
            k += 7
            await side.next()
            try:
                r, w = await asyncio.open_connection("127.0.0.1", a.http)
                tok = base64.urlsafe_b64encode(os.urandom(24)).decode()
                w.write(f"GET /v1/fetches/x HTTP/1.1\r\nHost: m\r\nAuthorization: Bearer {name}:{tok}\r\nConnection: close\r\n\r\n".encode())
                status = (await asyncio.wait_for(r.readline(), 30)).split(b" ")
                code = status[1] if len(status) > 1 else b"closed"
                side.book(name, code, b"401", b"429")
                w.close()
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                side.other["error"] += 1
                await asyncio.sleep(0.05)

    await asyncio.gather(*(one(i) for i in range(a.concurrency)))


async def real_account(a, deadline, out):
    """SMTP AUTH and an HTTP request with the right credentials every half
    second: the time from connecting to the 235 (or the HTTP status)."""
    plain = base64.b64encode(f"\0{a.user}\0{a.password}".encode()).decode()
    while time.monotonic() < deadline:
        t0 = time.monotonic()
        try:
            r, w = await asyncio.open_connection("127.0.0.1", a.smtp)
            await asyncio.wait_for(r.readline(), 10)
            w.write(f"EHLO real.invalid\r\nAUTH PLAIN {plain}\r\n".encode())
            line = b"250-"
            while line.startswith(b"250"):
                line = await asyncio.wait_for(r.readline(), 10)
            w.write(b"QUIT\r\n")
            w.close()
            if line.startswith(b"235"):
                out["smtp"].append(time.monotonic() - t0)
            else:
                out["failures"].append(line.decode(errors="replace").strip())
        except (OSError, asyncio.TimeoutError) as e:
            out["failures"].append(f"smtp {type(e).__name__}")
        t1 = time.monotonic()
        try:
            r, w = await asyncio.open_connection("127.0.0.1", a.http)
            w.write(f"GET /v1/fetches/00000000000000000000000000000000 HTTP/1.1\r\nHost: m\r\nAuthorization: Bearer {a.token}\r\nConnection: close\r\n\r\n".encode())
            status = (await asyncio.wait_for(r.readline(), 10)).split(b" ")
            w.close()
            if len(status) > 1 and status[1] == b"404":
                out["http"].append(time.monotonic() - t1)
            else:
                out["failures"].append(f"http {status}")
        except (OSError, asyncio.TimeoutError) as e:
            out["failures"].append(f"http {type(e).__name__}")
        await asyncio.sleep(max(0.0, 0.5 - (time.monotonic() - t0)))


async def first_login(a, delay, out):
    """--fresh-user's first AUTH, `delay` seconds into the attack,
    retried every second while refused for now (454), for up to 60 s."""
    await asyncio.sleep(delay)
    plain = base64.b64encode(f"\0{a.fresh_user}\0{a.fresh_password}".encode()).decode()
    t0 = time.monotonic()
    tries = 0
    while time.monotonic() - t0 < 60:
        tries += 1
        r, w = await asyncio.open_connection("127.0.0.1", a.smtp)
        await asyncio.wait_for(r.readline(), 10)
        w.write(f"EHLO fresh.invalid\r\nAUTH PLAIN {plain}\r\n".encode())
        line = b"250-"
        while line.startswith(b"250"):
            line = await asyncio.wait_for(r.readline(), 10)
        w.close()
        if not line.startswith(b"454"):
            break
        await asyncio.sleep(1)
    out.update({"reply": line.decode(errors="replace").strip(), "tries": tries,
                "seconds": time.monotonic() - t0})


async def run(a):
    names = [n.strip() for n in open(a.names) if n.strip()]
    smtp, http = Side(a.rate), Side(a.rate)
    real = {"smtp": [], "http": [], "failures": []}
    # The real account has used the mote before.
    await real_account(a, time.monotonic() + 0.1, {"smtp": [], "http": [], "failures": []})
    fresh = {}
    cpu0, t0 = cpu_seconds(a.pid), time.monotonic()
    smtp.t0 = http.t0 = t0
    deadline = t0 + a.deadline
    attack = asyncio.gather(
        smtp_attacker(a, names, smtp, a.attempts, deadline),
        http_attacker(a, names, http, a.attempts, deadline),
    )
    done = asyncio.Event()

    attack_end = []

    async def attack_then_stop():
        await attack
        attack_end.append(time.monotonic())
        done.set()

    async def real_until_done():
        task = asyncio.create_task(real_account(a, deadline, real))
        await done.wait()
        task.cancel()

    jobs = [attack_then_stop(), real_until_done()]
    if a.fresh_user:
        jobs.append(first_login(a, a.fresh_after, fresh))
    await asyncio.gather(*jobs)
    elapsed = attack_end[0] - t0
    verified_per_minute = {k: v.verified / (elapsed / 60) for k, v in (("smtp", smtp), ("http", http))}
    cpu = cpu_seconds(a.pid) - cpu0
    print(json.dumps({
        "seconds": elapsed,
        "verified_per_minute": verified_per_minute,
        "mote_cpu_seconds": cpu,
        "smtp": smtp.json(),
        "http": http.json(),
        "real": real,
        "first_login": fresh,
    }))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--smtp", type=int, required=True)
    p.add_argument("--http", type=int, required=True)
    p.add_argument("--names", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--fresh-user")
    p.add_argument("--fresh-password")
    p.add_argument("--fresh-after", type=float, default=60)
    p.add_argument("--attempts", type=int, default=10_000)
    p.add_argument("--concurrency", type=int, default=20)
    p.add_argument("--deadline", type=float, default=300)
    p.add_argument("--rate", type=float, default=0)
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
