#!/usr/bin/env python3
"""Spawn, list and destroy dust motes on real cloud APIs (Apache Libcloud).

  launch.py up --lifetime 6h --count 3 --spread regions --regions us-east-1,eu-west-1 \\
               --image ami-... --user alice -- --mail-relay smtp.example.org:587
  launch.py ls
  launch.py reap          # terminate every mote past its end (+ grace)
  launch.py down [ID...]  # terminate the given motes, or all of them

Runs on the user's own computer. Each mote gets its own user data from
`dustmote cloud-init` (arguments after `--` are passed to it), so its own
password; the password is printed once by `up` and kept nowhere else.
Everything the launcher knows about a mote is in its tags (`dustmote`,
`dustmote:expires`, `dustmote:lifetime`, `Name`): `ls`, `reap` and `down`
work from any machine with the credentials.

Credentials come from the environment (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY) or the provider's usual file (~/.aws/credentials,
profile AWS_PROFILE or "default") -- never from this repository.
DUSTMOTE_EC2_ENDPOINT=http://HOST:PORT points the driver at an EC2
emulator instead of AWS (tests use moto).
"""
import argparse
import configparser
import datetime as dt
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.parse

from libcloud.compute.providers import get_driver
from libcloud.compute.types import Provider

TAG = "dustmote"
TAG_EXPIRES = "dustmote:expires"
TAG_LIFETIME = "dustmote:lifetime"
# A mote powers itself off at boot + lifetime, with a backstop 10 minutes
# later; its tag counts from the launch, a little earlier than its boot.
# Past the tag by this much, a mote that still runs is overdue.
REAP_GRACE = dt.timedelta(minutes=20)
# What the mote prints on its console once its onion services are up
# (cloud-init's runcmd from `dustmote cloud-init`).
ANNOUNCE = re.compile(
    r"dustmote: smtp (?P<smtp>[a-z2-7]{56}\.onion:\d+) http (?P<http>[a-z2-7]{56}\.onion:\d+)"
    r" expires (?P<expires>\S+)"
)
PROVIDERS = ("ec2",)


class Fail(Exception):
    """An error for the user, printed without a traceback."""


def parse_duration(text):
    """'6h', '90m', '1d', '45s', '1h30m' -> timedelta."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+)\s*([smhd])", text)
    if not parts or "".join(n + u for n, u in parts) != re.sub(r"\s", "", text):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a duration such as 6h or 90m")
    return dt.timedelta(seconds=sum(int(n) * units[u] for n, u in parts))


def fmt_time(t):
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text):
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)


def credentials():
    key = os.environ.get("AWS_ACCESS_KEY_ID")
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        return key, secret
    path = os.environ.get("AWS_SHARED_CREDENTIALS_FILE", os.path.expanduser("~/.aws/credentials"))
    profile = os.environ.get("AWS_PROFILE", "default")
    cp = configparser.ConfigParser()
    if cp.read(path) and cp.has_section(profile):
        s = cp[profile]
        if s.get("aws_access_key_id") and s.get("aws_secret_access_key"):
            return s["aws_access_key_id"], s["aws_secret_access_key"]
    raise Fail(
        "no EC2 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
        f"or put profile [{profile}] in {path}"
    )


def driver(region):
    """A Libcloud EC2 driver for `region` (or for the emulator endpoint)."""
    key, secret = credentials()
    cls = get_driver(Provider.EC2)
    endpoint = os.environ.get("DUSTMOTE_EC2_ENDPOINT")
    if not endpoint:
        return cls(key, secret, region=region)
    u = urllib.parse.urlsplit(endpoint)
    # Version 4 signatures: what AWS wants today, and what lets an emulator
    # serving every service on one port tell EC2 from S3.
    return cls(
        key,
        secret,
        region=region,
        host=u.hostname,
        port=u.port,
        secure=u.scheme == "https",
        signature_version="4",
    )


def render_user_data(dustmote, lifetime, user, extra):
    """`dustmote cloud-init` for one mote: (user data, generated password)."""
    with tempfile.TemporaryDirectory() as d:
        secrets_file = os.path.join(d, "secrets.json")
        cmd = [
            dustmote,
            "cloud-init",
            "--lifetime",
            f"{int(lifetime.total_seconds())}s",
            "--user",
            user,
            "--secrets",
            secrets_file,
            *extra,
        ]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True)
        except FileNotFoundError:
            raise Fail(f"{dustmote}: not found (give --dustmote PATH)") from None
        if out.returncode != 0:
            raise Fail(f"dustmote cloud-init: {out.stderr.strip()}")
        with open(secrets_file) as f:
            users = json.load(f)["users"]
    return out.stdout, users[0]["password"] if users else None


def image_for(spec, region):
    """`--image`: one id for every region, or REGION=ID,... (AMI ids differ
    from region to region)."""
    if "=" not in spec:
        return spec
    pairs = dict(p.split("=", 1) for p in spec.split(",") if p)
    if region not in pairs:
        raise Fail(f"--image names no image for region {region}")
    return pairs[region]


def spread(count, regions, providers, how):
    """(provider, region) for each of `count` motes, round-robin over what
    `how` names ("regions", "providers", or both)."""
    how = set(how)
    rs = regions if "regions" in how else regions[:1]
    ps = providers if "providers" in how else providers[:1]
    places = [(p, r) for p in ps for r in rs]
    # Interleave providers first, so that 2 motes over 2 providers never
    # share one.
    places.sort(key=lambda pr: (rs.index(pr[1]), ps.index(pr[0])))
    return [places[i % len(places)] for i in range(count)]


def cmd_up(args):
    for p in args.providers:
        if p not in PROVIDERS:
            raise Fail(f"provider {p!r}: only {', '.join(PROVIDERS)} for now")
    now = dt.datetime.now(dt.timezone.utc)
    expires = now + args.lifetime
    motes = []
    for provider, region in spread(args.count, args.regions, args.providers, args.spread):
        d = driver(region)
        name = "mote-" + secrets.token_hex(4)
        user_data, password = render_user_data(args.dustmote, args.lifetime, args.user, args.cloud_init)
        image = d.get_image(image_for(args.image, region))
        size = next((s for s in d.list_sizes() if s.id == args.size), None)
        if size is None:
            raise Fail(f"{region}: no instance type {args.size}")
        node = d.create_node(
            name=name,
            size=size,
            image=image,
            ex_userdata=user_data,
            ex_metadata={
                "Name": name,
                TAG: "1",
                TAG_EXPIRES: fmt_time(expires),
                TAG_LIFETIME: str(int(args.lifetime.total_seconds())),
            },
            # A mote that powers itself off is gone, not just stopped: it
            # stops costing and leaves no disk behind.
            ex_terminate_on_shutdown=True,
        )
        motes.append(
            {
                "name": name,
                "id": node.id,
                "provider": provider,
                "region": region,
                "user": args.user,
                "password": password,
                "expires_by": fmt_time(expires),
            }
        )
    if args.wait > 0:
        wait_for_onions(motes, args.wait)
    if args.json:
        print(json.dumps(motes, indent=2))
        return
    for m in motes:
        if m.get("smtp"):
            where = f"  smtp {m['smtp']}  http {m['http']}\n  ends {m['expires_at']}"
        else:
            where = (
                f"  lives until about {m['expires_by']} (its lifetime counts from its boot)\n"
                f"  onion addresses: `launch.py ls` once it has booted (from its console)"
            )
        print(
            f"{m['name']}  {m['provider']}/{m['region']}  {m['id']}\n"
            f"  user {m['user']}, password (shown once): {m['password']}\n{where}"
        )


def wait_for_onions(motes, minutes):
    """Poll each new mote's console until it announces its onion addresses
    or `minutes` pass (providers publish console output with a delay of
    minutes); what was found is added to each mote's record."""
    deadline = time.monotonic() + minutes * 60
    drivers = {}
    while True:
        pending = [m for m in motes if not m.get("smtp")]
        if not pending:
            return
        for m in pending:
            d = drivers.setdefault(m["region"], driver(m["region"]))
            node = next(iter(d.list_nodes(ex_node_ids=[m["id"]])), None)
            found = onions(d, node) if node else None
            if found:
                m.update(smtp=found["smtp"], http=found["http"], expires_at=found["expires"])
        if time.monotonic() >= deadline:
            return
        time.sleep(min(15, max(0.0, deadline - time.monotonic())))


def motes(regions):
    """Every mote in `regions`: (region, driver, node)."""
    for region in regions:
        d = driver(region)
        for node in d.list_nodes(ex_filters={f"tag:{TAG}": "1"}):
            yield region, d, node


def onions(d, node):
    """The onion addresses the mote announced on its console, if any."""
    try:
        out = d.ex_get_console_output(node).get("output") or ""
    except Exception:  # noqa: BLE001 - no console yet is not an error
        return None
    found = None
    for m in ANNOUNCE.finditer(out):
        found = m.groupdict()
    return found


LIVE = ("running", "pending", "starting", "rebooting", "stopping", "stopped")


def state_of(node):
    return str(node.state).lower().split(".")[-1]


def cmd_ls(args):
    rows = []
    for region, d, node in motes(args.regions):
        tags = node.extra.get("tags", {})
        row = {
            "name": tags.get("Name", node.name),
            "id": node.id,
            "region": region,
            "state": state_of(node),
            "expires_by": tags.get(TAG_EXPIRES),
            "smtp": None,
            "http": None,
        }
        o = onions(d, node)
        if o:
            row.update(smtp=o["smtp"], http=o["http"], expires_at=o["expires"])
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        addr = f"smtp {r['smtp']}  http {r['http']}" if r["smtp"] else "onion addresses not published yet"
        print(f"{r['name']}  {r['region']}  {r['id']}  {r['state']}  ends {r.get('expires_at') or r['expires_by']}  {addr}")


def cmd_reap(args):
    now = dt.datetime.now(dt.timezone.utc)
    reaped = []
    for region, d, node in motes(args.regions):
        if state_of(node) not in LIVE:
            continue
        tag = node.extra.get("tags", {}).get(TAG_EXPIRES)
        # A mote without a readable end time is overdue by definition.
        try:
            overdue = tag is None or now > parse_time(tag) + REAP_GRACE
        except ValueError:
            overdue = True
        if overdue:
            d.destroy_node(node)
            reaped.append(node.id)
            print(f"reaped {node.id} ({region}), due {tag}")
    if not reaped:
        print("nothing overdue")


def cmd_down(args):
    done = 0
    for region, d, node in motes(args.regions):
        if state_of(node) not in LIVE:
            continue
        if args.ids and node.id not in args.ids:
            continue
        d.destroy_node(node)
        done += 1
        print(f"terminated {node.id} ({region})")
    if done == 0:
        print("no mote to terminate")


def main(argv=None):
    p = argparse.ArgumentParser(prog="launch.py", description=__doc__.split("\n")[0])
    p.add_argument(
        "--regions",
        type=lambda s: [r.strip() for r in s.split(",") if r.strip()],
        default=[os.environ.get("AWS_DEFAULT_REGION", "us-east-1")],
        help="comma-separated regions (default: $AWS_DEFAULT_REGION or us-east-1)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="spawn motes")
    up.add_argument("--lifetime", type=parse_duration, default=parse_duration("6h"))
    up.add_argument("--count", type=int, default=1)
    up.add_argument(
        "--spread",
        type=lambda s: [w.strip() for w in s.split(",") if w.strip()],
        default=["regions"],
        help="spread motes over 'providers', 'regions' or both (comma-separated)",
    )
    up.add_argument(
        "--providers",
        type=lambda s: [w.strip() for w in s.split(",") if w.strip()],
        default=["ec2"],
    )
    up.add_argument("--image", required=True, help="the mote image: an AMI id, or REGION=AMI,... per region")
    up.add_argument("--size", default="t3.nano", help="instance type (512 MiB is enough)")
    up.add_argument("--user", default="user", help="the mote's user name")
    up.add_argument("--dustmote", default="dustmote", help="the dustmote binary that renders the user data")
    up.add_argument(
        "--wait",
        type=float,
        default=0,
        metavar="MINUTES",
        help="wait up to this long for the motes to announce their onion addresses",
    )
    up.add_argument("cloud_init", nargs="*", help="after --: more `dustmote cloud-init` arguments")
    sub.add_parser("ls", help="list motes, their end times and onion addresses")
    sub.add_parser("reap", help="terminate motes past their end")
    down = sub.add_parser("down", help="terminate motes (all, or the given ids)")
    down.add_argument("ids", nargs="*")
    args = p.parse_args(argv)
    if args.cmd == "up":
        if args.count < 1:
            p.error("--count must be at least 1")
        for w in args.spread:
            if w not in ("providers", "regions"):
                p.error(f"--spread {w!r}: 'providers' or 'regions'")
    try:
        {"up": cmd_up, "ls": cmd_ls, "reap": cmd_reap, "down": cmd_down}[args.cmd](args)
    except Fail as e:
        print(f"launch.py: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
