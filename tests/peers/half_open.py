#!/usr/bin/env python3
"""Half-open connections against a mote's HTTP API on 127.0.0.1, while a
real user and a real peer make requests.

  half_open.py --http PORT --user-token NAME:TOKEN --peer-token NAME:TOKEN
               --item FILE [--connections N] [--seconds S] [--rounds R]

N connections (default 64, the API's default slot count) each send the
first line of a request and then nothing, as a client stalled behind Tor
would; one that is closed is opened again at once (the attacker keeps the
pressure up). After 3 s, R rounds (default 5) of:
  - the user: GET /v1/fetches/<an id that does not exist> with its token
    (an authenticated 404);
  - the peer: POST /v1/peer/items, the mail item in FILE under a fresh
    Dust-Item-Id (201).
Each request is timed from connect to the end of the answer (10 s at
most). Everything stops after S seconds (default 30) or when the rounds
are done. Prints one JSON object: the statuses and latencies of each side,
how many half-open connections were opened and how many the mote closed."""
import argparse
import http.client
import json
import os
import socket
import threading
import time


def holder(a, stop, counts, lock):
    """Keep one half-open connection open; reopen it when it is closed."""
    while not stop.is_set():
        try:
            s = socket.create_connection(("127.0.0.1", a.http), timeout=1)
        except OSError:
            time.sleep(0.05)
            continue
        with lock:
            counts["opened"] += 1
        try:
            s.sendall(b"GET /status HTTP/1.1\r\nHost: mote\r\n")
            s.settimeout(0.2)
            while not stop.is_set():
                try:
                    if s.recv(4096) == b"":
                        with lock:
                            counts["closed_by_mote"] += 1
                        break
                except socket.timeout:
                    continue
        except OSError:
            with lock:
                counts["closed_by_mote"] += 1
        finally:
            s.close()


def timed(method, path, headers, body=None, port=0):
    t0 = time.monotonic()
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request(method, path, body=body, headers=dict(headers, Connection="close"))
        r = c.getresponse()
        r.read()
        status = r.status
        c.close()
    except OSError as e:
        status = f"error: {e}"
    return status, round(time.monotonic() - t0, 3)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--http", type=int, required=True)
    p.add_argument("--user-token", required=True)
    p.add_argument("--peer-token", required=True)
    p.add_argument("--item", required=True)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    item = open(a.item, "rb").read()
    stop, lock = threading.Event(), threading.Lock()
    counts = {"opened": 0, "closed_by_mote": 0}
    holders = [threading.Thread(target=holder, args=(a, stop, counts, lock), daemon=True)
               for _ in range(a.connections)]
    for t in holders:
        t.start()
    deadline = time.monotonic() + a.seconds
    time.sleep(3)
    out = {"user": [], "peer": []}
    for _ in range(a.rounds):
        if time.monotonic() > deadline:
            break
        missing = os.urandom(16).hex()
        out["user"].append(timed("GET", f"/v1/fetches/{missing}",
                                 {"Authorization": f"Bearer {a.user_token}"}, port=a.http))
        out["peer"].append(timed("POST", "/v1/peer/items", {
            "Authorization": f"Bearer {a.peer_token}",
            "Dust-Item-Id": os.urandom(16).hex(),
            "Dust-Item-Kind": "mail",
            "Content-Type": "application/octet-stream",
        }, body=item, port=a.http))
        time.sleep(0.5)
    stop.set()
    for t in holders:
        t.join(timeout=2)
    out.update(counts)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
