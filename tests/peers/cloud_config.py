#!/usr/bin/env python3
"""Reads and extends a #cloud-config with PyYAML (cloud-init's own parser).

  cloud_config.py files CC OUTDIR
      writes each write_files entry's content to OUTDIR/<path, '/' -> '_'>
      (decoded, as cloud-init does, when its encoding is b64) and prints
      one JSON line per entry: path, owner, permissions, defer, encoding.
  cloud_config.py keys CC
      prints the top-level keys as a JSON list.
  cloud_config.py extend CC OUT [--file PATH=LOCALFILE]... [--runcmd CMD]...
      adds write_files entries and runcmd steps (after the existing ones):
      what a test needs beside the mote's own user data.
"""
import argparse
import base64
import json
import os
import sys

import yaml


def load(path):
    with open(path) as f:
        text = f.read()
    if not text.startswith("#cloud-config\n"):
        sys.exit(f"{path}: does not start with #cloud-config")
    return yaml.safe_load(text)


def files(args):
    cc = load(args.cc)
    for entry in cc.get("write_files", []):
        name = entry["path"].strip("/").replace("/", "_")
        content = entry.get("content", "")
        if entry.get("encoding") in ("b64", "base64"):
            content = base64.b64decode(content).decode()
        with open(os.path.join(args.outdir, name), "w") as f:
            f.write(content)
        print(json.dumps({k: entry.get(k) for k in ("path", "owner", "permissions", "defer", "encoding")}))


def keys(args):
    print(json.dumps(list(load(args.cc))))


def extend(args):
    cc = load(args.cc)
    for spec in args.file:
        path, local = spec.split("=", 1)
        with open(local) as f:
            content = f.read()
        cc.setdefault("write_files", []).append(
            {"path": path, "content": content, "permissions": "0644"}
        )
    cc.setdefault("runcmd", []).extend(args.runcmd)
    with open(args.out, "w") as f:
        f.write("#cloud-config\n")
        yaml.safe_dump(cc, f, sort_keys=False)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("files")
    f.add_argument("cc")
    f.add_argument("outdir")
    k = sub.add_parser("keys")
    k.add_argument("cc")
    e = sub.add_parser("extend")
    e.add_argument("cc")
    e.add_argument("out")
    e.add_argument("--file", action="append", default=[])
    e.add_argument("--runcmd", action="append", default=[])
    args = p.parse_args()
    {"files": files, "keys": keys, "extend": extend}[args.cmd](args)


if __name__ == "__main__":
    main()
