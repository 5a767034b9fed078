#!/usr/bin/env python3
"""A receiving MTA for the tests: aiosmtpd, writing each message it accepts
to DIR as N.eml (the DATA bytes as received) plus N.json (envelope and
arrival time). Files appear atomically (written, then renamed)."""
import argparse
import json
import os
import signal
import time

from aiosmtpd.controller import Controller


class Store:
    def __init__(self, directory, reject_first):
        self.dir = directory
        self.n = 0
        self.reject_first = reject_first

    async def handle_DATA(self, server, session, envelope):
        if self.reject_first > 0:
            self.reject_first -= 1
            return "451 4.3.0 test sink: try again later"
        self.n += 1
        base = os.path.join(self.dir, f"{os.getpid()}-{self.n:06d}")
        with open(base + ".eml.tmp", "wb") as f:
            f.write(envelope.original_content)
        with open(base + ".json.tmp", "w") as f:
            json.dump({"mail_from": envelope.mail_from, "rcpt_tos": envelope.rcpt_tos,
                       "time": time.time(), "peer": session.peer[0]}, f)
        os.rename(base + ".eml.tmp", base + ".eml")
        os.rename(base + ".json.tmp", base + ".json")
        return "250 2.0.0 Ok: stored"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--reject-first", type=int, default=0,
                   help="answer 451 to the first N messages")
    a = p.parse_args()
    c = Controller(Store(a.dir, a.reject_first), hostname="127.0.0.1", port=a.port,
                   decode_data=False, data_size_limit=64 * 1024 * 1024)
    c.start()
    print("ready", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    c.stop()


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    main()
