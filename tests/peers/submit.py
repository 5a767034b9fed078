#!/usr/bin/env python3
"""Mail submission with Python's smtplib, for the tests.

  submit.py send  --port P [--user U --password W --auth plain|login] --from F --to T [--to T2] --file MSG [--smtputf8]
      Sends one message; prints one JSON object: {"ok": true} or
      {"ok": false, "stage": ..., "code": N, "text": ...}.
  submit.py hold --port P --user U --password W --wait SECS
      Authenticates, prints {"authenticated": true} (or the refusal as
      send does), then waits up to SECS for a line the server sends by
      itself and prints it: {"code": N, "text": ...}, {"closed": true} or
      {"timeout": true}.
  submit.py track --port P --user U --password W --sessions S --count N --deadline SECS --out FILE
      S sessions send N messages in all, each with a unique token in its
      Subject and body, reconnecting whenever the server is unreachable
      (it is being killed). A token is appended to FILE (and fsynced) only
      after the server answered 250 to its DATA. Stops after N messages or
      SECS seconds, whichever comes first.
"""
import argparse
import json
import os
import smtplib
import sys
import threading
import time


def login(s, a):
    if a.user is None:
        return
    s.user, s.password = a.user, a.password
    if a.auth == "login":
        s.auth("LOGIN", s.auth_login, initial_response_ok=False)
    else:
        s.auth("PLAIN", s.auth_plain)


def send(a):
    data = open(a.file, "rb").read()
    stage = "connect"
    try:
        with smtplib.SMTP("127.0.0.1", a.port, timeout=30) as s:
            stage = "ehlo"
            s.ehlo("client.invalid")
            stage = "auth"
            login(s, a)
            stage = "mail"
            s.sendmail(a.from_, a.to, data, mail_options=["SMTPUTF8"] if a.smtputf8 else [])
        print(json.dumps({"ok": True}))
    except smtplib.SMTPSenderRefused as e:
        print(json.dumps({"ok": False, "stage": "mail", "code": e.smtp_code, "text": e.smtp_error.decode()}))
    except smtplib.SMTPRecipientsRefused as e:
        (code, text), = list(e.recipients.values())[:1]
        print(json.dumps({"ok": False, "stage": "rcpt", "code": code, "text": text.decode()}))
    except smtplib.SMTPDataError as e:
        print(json.dumps({"ok": False, "stage": "data", "code": e.smtp_code, "text": e.smtp_error.decode()}))
    except smtplib.SMTPResponseException as e:
        print(json.dumps({"ok": False, "stage": stage, "code": e.smtp_code, "text": e.smtp_error.decode()}))


def hold(a):
    try:
        s = smtplib.SMTP("127.0.0.1", a.port, timeout=a.wait)
        s.ehlo("client.invalid")
        login(s, a)
    except smtplib.SMTPResponseException as e:
        print(json.dumps({"ok": False, "stage": "auth", "code": e.smtp_code, "text": e.smtp_error.decode()}), flush=True)
        return
    print(json.dumps({"authenticated": True}), flush=True)
    try:
        code, text = s.getreply()
        print(json.dumps({"code": code, "text": text.decode()}), flush=True)
    except smtplib.SMTPServerDisconnected as e:
        # smtplib reports its own read timeout as a disconnection.
        key = "timeout" if "timed out" in str(e) else "closed"
        print(json.dumps({key: True}), flush=True)


def track(a):
    deadline = time.monotonic() + a.deadline
    lock = threading.Lock()
    out = open(a.out, "a")
    counter = iter(range(a.count))
    stats = {"accepted": 0, "refused": 0, "conn_errors": 0}

    def next_token():
        with lock:
            i = next(counter, None)
        return None if i is None else f"tok-{os.getpid()}-{i:06d}"

    def worker(w):
        tok = next_token()
        while tok is not None and time.monotonic() < deadline:
            try:
                with smtplib.SMTP("127.0.0.1", a.port, timeout=10) as s:
                    s.ehlo("client.invalid")
                    login(s, a)
                    while tok is not None and time.monotonic() < deadline:
                        msg = (f"From: w{w}@example.org\r\nTo: sink@example.net\r\n"
                               f"Subject: {tok}\r\n\r\n{tok}\r\n" + ("x" * 76 + "\r\n") * 20).encode()
                        s.sendmail(f"w{w}@example.org", ["sink@example.net"], msg)
                        with lock:
                            out.write(tok + "\n")
                            out.flush()
                            os.fsync(out.fileno())
                            stats["accepted"] += 1
                        tok = next_token()
            except smtplib.SMTPResponseException:
                with lock:
                    stats["refused"] += 1
                time.sleep(0.05)
            except (OSError, smtplib.SMTPException):
                with lock:
                    stats["conn_errors"] += 1
                time.sleep(0.05)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(a.sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(stats))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("send", "track", "hold"):
        q = sub.add_parser(name)
        q.add_argument("--port", type=int, required=True)
        q.add_argument("--user")
        q.add_argument("--password")
        q.add_argument("--auth", choices=["plain", "login"], default="plain")
    s = sub.choices["send"]
    s.add_argument("--from", dest="from_", required=True)
    s.add_argument("--to", action="append", required=True)
    s.add_argument("--file", required=True)
    s.add_argument("--smtputf8", action="store_true", help="MAIL FROM with SMTPUTF8")
    t = sub.choices["track"]
    t.add_argument("--sessions", type=int, default=4)
    t.add_argument("--count", type=int, required=True)
    t.add_argument("--deadline", type=float, required=True)
    t.add_argument("--out", required=True)
    sub.choices["hold"].add_argument("--wait", type=float, required=True)
    a = p.parse_args()
    {"send": send, "track": track, "hold": hold}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
