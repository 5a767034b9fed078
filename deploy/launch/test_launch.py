"""The launcher against an EC2 API: moto's server on 127.0.0.1 (an EC2
emulator we did not write), spoken to through Apache Libcloud by the
launcher and checked independently with boto3.

Run: DUSTMOTE_BIN=target/debug/dustmote python3 -m unittest -v deploy/launch/test_launch.py
(tests/launcher.rs runs it inside `cargo test`).

One shim corrects the emulator, not the launcher: moto 5 answers EC2 calls
with xmlns="http://ec2.amazonaws.com/doc/2016-11-15" where AWS (and
Libcloud's parser) use the same URI with a trailing slash; without the
slash Libcloud finds no elements at all.
"""
import base64
import datetime as dt
import http.client
import http.server
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import unittest
from contextlib import redirect_stdout

import boto3

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import launch  # noqa: E402

REGIONS = ["us-east-1", "eu-west-1"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Shim(http.server.BaseHTTPRequestHandler):
    """Forwards to moto and adds the trailing slash to EC2's namespace."""

    upstream = None

    def do_POST(self):
        self._forward()

    def do_GET(self):
        self._forward()

    def _forward(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        c = http.client.HTTPConnection(*self.upstream, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "content-length"}
        c.request(self.command, self.path, body=body, headers=headers)
        r = c.getresponse()
        data = r.read().replace(
            b'xmlns="http://ec2.amazonaws.com/doc/2016-11-15"',
            b'xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"',
        )
        self.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class LauncherAgainstMoto(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dustmote = os.environ.get("DUSTMOTE_BIN")
        if not cls.dustmote:
            raise unittest.SkipTest("DUSTMOTE_BIN is not set")
        port = free_port()
        cls.moto = subprocess.Popen(
            ["moto_server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or cls.moto.poll() is not None:
                    cls.moto.kill()
                    raise RuntimeError("moto_server did not start")
                time.sleep(0.1)
        Shim.upstream = ("127.0.0.1", port)
        cls.shim = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Shim)
        threading.Thread(target=cls.shim.serve_forever, daemon=True).start()
        os.environ.update(
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            DUSTMOTE_EC2_ENDPOINT=f"http://127.0.0.1:{cls.shim.server_address[1]}",
        )
        # boto3 talks to moto directly: a second, independent client.
        cls.ec2 = {
            r: boto3.client(
                "ec2",
                region_name=r,
                endpoint_url=f"http://127.0.0.1:{port}",
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
            )
            for r in REGIONS
        }
        cls.images = {r: cls.ec2[r].describe_images(Owners=["amazon"])["Images"][0]["ImageId"] for r in REGIONS}

    @classmethod
    def tearDownClass(cls):
        cls.shim.shutdown()
        cls.moto.terminate()
        cls.moto.wait(timeout=30)

    def run_launch(self, *argv):
        out = io.StringIO()
        with redirect_stdout(out):
            rc = launch.main(list(argv))
        self.assertEqual(rc, 0, out.getvalue())
        return out.getvalue()

    def instances(self, region, **filters):
        f = [{"Name": "tag:dustmote", "Values": ["1"]}]
        f += [{"Name": k, "Values": v} for k, v in filters.items()]
        res = self.ec2[region].describe_instances(Filters=f)["Reservations"]
        return [i for r in res for i in r["Instances"]]

    def test_up_ls_reap_down(self):
        image = ",".join(f"{r}={a}" for r, a in self.images.items())
        before = dt.datetime.now(dt.timezone.utc)
        up = json.loads(
            self.run_launch(
                "--regions", ",".join(REGIONS), "--json",
                "up", "--count", "3", "--spread", "regions", "--lifetime", "2h",
                "--image", image, "--user", "alice", "--dustmote", self.dustmote,
                "--", "--mail-relay", "smtp.example.org:587",
            )
        )
        # 3 motes over 2 regions, round-robin.
        self.assertEqual([m["region"] for m in up], ["us-east-1", "eu-west-1", "us-east-1"])
        passwords = [m["password"] for m in up]
        self.assertEqual(len(set(passwords)), 3)
        self.assertTrue(all(len(p) >= 32 for p in passwords))
        for m in up:
            expires = launch.parse_time(m["expires_by"])
            self.assertLess(abs((expires - before - dt.timedelta(hours=2)).total_seconds()), 120)

        user_datas = []
        for m in up:
            inst = self.ec2[m["region"]].describe_instances(InstanceIds=[m["id"]])["Reservations"][0]["Instances"][0]
            tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
            self.assertEqual(tags["dustmote"], "1")
            self.assertEqual(tags["Name"], m["name"])
            self.assertEqual(tags["dustmote:expires"], m["expires_by"])
            self.assertEqual(tags["dustmote:lifetime"], "7200")
            self.assertEqual(inst["ImageId"], self.images[m["region"]])
            self.assertEqual(inst["InstanceType"], "t3.nano")
            attr = self.ec2[m["region"]].describe_instance_attribute(
                InstanceId=m["id"], Attribute="instanceInitiatedShutdownBehavior"
            )
            self.assertEqual(attr["InstanceInitiatedShutdownBehavior"]["Value"], "terminate")
            ud = self.ec2[m["region"]].describe_instance_attribute(InstanceId=m["id"], Attribute="userData")
            text = base64.b64decode(ud["UserData"]["Value"]).decode()
            self.assertTrue(text.startswith("#cloud-config\n"), text[:80])
            self.assertIn("end=$((boot + 7200))", text)
            self.assertIn('relay = "smtp.example.org:587"', text)
            self.assertIn('name = "alice"', text)
            # The generated password's fast digest (a generated secret).
            self.assertIn("$dust-secret$v=1$", text)
            self.assertTrue(m["password"].startswith("dust."), m["password"])
            self.assertNotIn(m["password"], text)
            user_datas.append(text)
        self.assertEqual(len(set(user_datas)), 3, "each mote its own user data")

        # ls: every mote with its end time; no onion address before the
        # mote has printed one on its console (moto's console has none).
        ls = json.loads(self.run_launch("--regions", ",".join(REGIONS), "--json", "ls"))
        self.assertEqual(sorted(r["id"] for r in ls), sorted(m["id"] for m in up))
        for r in ls:
            self.assertEqual(r["state"], "running")
            self.assertIsNone(r["smtp"])
            self.assertTrue(r["expires_by"])
        self.assertIn("onion addresses not published yet", self.run_launch("--regions", ",".join(REGIONS), "ls"))

        # --wait is bounded: moto's console never announces onion addresses,
        # so `up --wait` gives up at its limit and says where to look.
        t0 = time.monotonic()
        out = self.run_launch(
            "--regions", "us-east-1", "up", "--wait", "0.05", "--image", image,
            "--user", "bob", "--dustmote", self.dustmote, "--", "--mail-mx",
        )
        self.assertLess(time.monotonic() - t0, 60)
        self.assertIn("password (shown once)", out)
        self.assertIn("onion addresses: `launch.py ls` once it has booted", out)
        extra = out.split()[2]
        self.run_launch("--regions", "us-east-1", "down", extra)
        state = self.ec2["us-east-1"].describe_instances(InstanceIds=[extra])["Reservations"][0]["Instances"][0]["State"]["Name"]
        self.assertIn(state, ("shutting-down", "terminated"))

        # An overdue mote (its end long past: it failed to power off) is
        # reaped; the others are not.
        overdue = self.ec2["eu-west-1"].run_instances(
            ImageId=self.images["eu-west-1"], MinCount=1, MaxCount=1, InstanceType="t3.nano",
            TagSpecifications=[{"ResourceType": "instance", "Tags": [
                {"Key": "dustmote", "Value": "1"},
                {"Key": "dustmote:expires", "Value": "2026-01-01T00:00:00Z"},
            ]}],
        )["Instances"][0]["InstanceId"]
        out = self.run_launch("--regions", ",".join(REGIONS), "reap")
        self.assertIn(f"reaped {overdue}", out)
        self.assertEqual(out.count("reaped "), 1, out)
        state = self.ec2["eu-west-1"].describe_instances(InstanceIds=[overdue])["Reservations"][0]["Instances"][0]["State"]["Name"]
        self.assertIn(state, ("shutting-down", "terminated"))
        live = [i for r in REGIONS for i in self.instances(r, **{"instance-state-name": ["running"]})]
        self.assertEqual(sorted(i["InstanceId"] for i in live), sorted(m["id"] for m in up))
        self.assertIn("nothing overdue", self.run_launch("--regions", ",".join(REGIONS), "reap"))

        # down: everything.
        out = self.run_launch("--regions", ",".join(REGIONS), "down")
        self.assertEqual(out.count("terminated "), 3, out)
        live = [i for r in REGIONS for i in self.instances(r, **{"instance-state-name": ["running", "pending"]})]
        self.assertEqual(live, [])

    def test_errors_are_clear(self):
        out = io.StringIO()
        err = io.StringIO()
        from contextlib import redirect_stderr
        with redirect_stdout(out), redirect_stderr(err):
            rc = launch.main(["up", "--image", "ami-x", "--providers", "ec2,linode", "--spread", "providers"])
        self.assertEqual(rc, 1)
        self.assertIn("provider 'linode'", err.getvalue())
        key = os.environ.pop("AWS_ACCESS_KEY_ID")
        try:
            os.environ["AWS_SHARED_CREDENTIALS_FILE"] = "/nonexistent"
            with redirect_stdout(out), redirect_stderr(err):
                rc = launch.main(["ls"])
            self.assertEqual(rc, 1)
            self.assertIn("no EC2 credentials", err.getvalue())
        finally:
            os.environ["AWS_ACCESS_KEY_ID"] = key
            del os.environ["AWS_SHARED_CREDENTIALS_FILE"]


class Parsing(unittest.TestCase):
    def test_durations(self):
        self.assertEqual(launch.parse_duration("6h"), dt.timedelta(hours=6))
        self.assertEqual(launch.parse_duration("1h30m"), dt.timedelta(minutes=90))
        for bad in ("", "6", "6x", "h6", "6h x"):
            with self.assertRaises(Exception):
                launch.parse_duration(bad)

    def test_spread(self):
        self.assertEqual(
            launch.spread(3, ["a", "b"], ["ec2"], ["regions"]),
            [("ec2", "a"), ("ec2", "b"), ("ec2", "a")],
        )
        self.assertEqual(launch.spread(2, ["a", "b"], ["ec2"], ["providers"]), [("ec2", "a"), ("ec2", "a")])

    def test_the_console_announcement(self):
        # The line `dustmote cloud-init`'s boot script prints (as a booted
        # mote printed it in tests/vm_boot.rs, which checks it with this
        # same expression).
        line = (
            "[   90.913792] cloud-init[490]: dustmote: smtp "
            "7zw2rdsgqfcgmqzkou76gpbk777bgubmdaz4fshaccjpdv77yzpomlid.onion:587 http "
            "q2towpb4icgtj43k2657h4ash6hzwazonn5lhmtrjkw4bccay4iya7id.onion:80 expires 2026-11-29T18:07:48Z"
        )
        m = launch.ANNOUNCE.search("noise\n" + line + "\nmore noise")
        self.assertEqual(m["smtp"], "7zw2rdsgqfcgmqzkou76gpbk777bgubmdaz4fshaccjpdv77yzpomlid.onion:587")
        self.assertEqual(m["http"], "q2towpb4icgtj43k2657h4ash6hzwazonn5lhmtrjkw4bccay4iya7id.onion:80")
        self.assertEqual(m["expires"], "2026-11-29T18:07:48Z")

    def test_images_per_region(self):
        self.assertEqual(launch.image_for("ami-1", "x"), "ami-1")
        self.assertEqual(launch.image_for("r1=ami-1,r2=ami-2", "r2"), "ami-2")
        with self.assertRaises(launch.Fail):
            launch.image_for("r1=ami-1", "r3")


if __name__ == "__main__":
    unittest.main()
