#!/usr/bin/env python3
"""A hostile stand-in for tor's control port on 127.0.0.1, for tests that
check what the mote's control client trusts.

  fake_control.py --port P --log FILE --mode MODE [--cookiefile PATH]
                  [--seconds S]

Writes every line it receives to FILE (one per line, as received). Modes:
  cookiefile  PROTOCOLINFO offers COOKIE, SAFECOOKIE and HASHEDPASSWORD and
              names PATH as COOKIEFILE (a file it wants to read through the
              client); answers AUTHCHALLENGE with a made-up hash and nonce
              (it does not know tor's cookie); accepts any AUTHENTICATE.
  cookieonly  the same but offers COOKIE and SAFECOOKIE only.
  badid       no authentication (METHODS=NULL); ADD_ONION gets a ServiceID
              and a PrivateKey out of tor's format.
  stall       accepts connections and never answers.
  flood       answers PROTOCOLINFO with endless bytes and no line end
              (at most 400 MiB); prints how many it got to send.
Exits after S seconds (default 60)."""
import argparse
import os
import socket
import threading
import time


def serve(conn, a, log):
    f = conn.makefile("rb")
    sent = 0
    while True:
        line = f.readline(1 << 20)
        if not line:
            return
        with open(a.log, "ab") as out:
            out.write(line)
        cmd = line.strip().split(b" ")[0].upper()
        if a.mode == "stall":
            continue
        if cmd == b"PROTOCOLINFO":
            if a.mode == "flood":
                chunk = b"x" * (1 << 20)
                try:
                    while sent < 400 << 20:
                        conn.sendall(chunk)
                        sent += len(chunk)
                except OSError:
                    pass
                print(f"flood: sent {sent}", flush=True)
                return
            methods = {
                "cookiefile": "COOKIE,SAFECOOKIE,HASHEDPASSWORD",
                "cookieonly": "COOKIE,SAFECOOKIE",
                "badid": "NULL",
            }[a.mode]
            cookie = f' COOKIEFILE="{a.cookiefile}"' if a.cookiefile else ""
            conn.sendall(
                f'250-PROTOCOLINFO 1\r\n250-AUTH METHODS={methods}{cookie}\r\n'
                '250-VERSION Tor="0.4.9.11"\r\n250 OK\r\n'.encode()
            )
        elif cmd == b"AUTHCHALLENGE":
            conn.sendall(
                f"250 AUTHCHALLENGE SERVERHASH={os.urandom(32).hex().upper()} "
                f"SERVERNONCE={os.urandom(32).hex().upper()}\r\n".encode()
            )
        elif cmd == b"GETINFO":
            conn.sendall(b"250-status/circuit-established=0\r\n250 OK\r\n")
        elif cmd == b"ADD_ONION":
            conn.sendall(
                b"250-ServiceID=../../../etc/dustmote\r\n"
                b"250-PrivateKey=ED25519-V3:AAAA Port=25,127.0.0.1:22 Flags=Detach\r\n250 OK\r\n"
            )
        else:
            conn.sendall(b"250 OK\r\n")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--mode", required=True,
                   choices=["cookiefile", "cookieonly", "badid", "stall", "flood"])
    p.add_argument("--cookiefile")
    p.add_argument("--seconds", type=float, default=60.0)
    a = p.parse_args()
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", a.port))
    s.listen(16)
    s.settimeout(0.5)
    print("ready", flush=True)
    deadline = time.monotonic() + a.seconds
    while time.monotonic() < deadline:
        try:
            conn, _ = s.accept()
        except socket.timeout:
            continue
        threading.Thread(target=serve, args=(conn, a, None), daemon=True).start()


main()
