#!/usr/bin/env bash
# Installs the real peers the test suite runs against (Debian packages and two
# Python packages) and the one C library the build links (SQLite, for Arti).
# Idempotent; needs root or passwordless sudo.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

need=()
command -v swaks >/dev/null || need+=(swaks)
command -v smtp-sink >/dev/null || [ -x /usr/sbin/smtp-sink ] || need+=(postfix)
command -v tor >/dev/null || need+=(tor)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v curl >/dev/null || need+=(curl)
command -v aria2c >/dev/null || need+=(aria2)
command -v dnsmasq >/dev/null || [ -x /usr/sbin/dnsmasq ] || need+=(dnsmasq-base)
command -v openssl >/dev/null || need+=(openssl)
# Arti's directory cache links against the system SQLite.
dpkg -s libsqlite3-dev >/dev/null 2>&1 || need+=(libsqlite3-dev)
command -v pkg-config >/dev/null || need+=(pkg-config)
# systemd-analyze scores deploy/systemd/dustmote.service (tests/deploy.rs).
command -v systemd-analyze >/dev/null || need+=(systemd)
# The mote as a VM (tests/vm_boot.rs, tests/cloud_init.rs): the image is
# built with mmdebstrap, booted with QEMU, seeded with cloud-localds; socat
# carries the guest's one forwarded port; cloud-init checks the user data;
# debugfs reads the guest's disk afterwards; cargo-deb builds the package.
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v cloud-localds >/dev/null || need+=(cloud-image-utils)
command -v cloud-init >/dev/null || need+=(cloud-init)
command -v socat >/dev/null || need+=(socat)
command -v debugfs >/dev/null || [ -x /usr/sbin/debugfs ] || need+=(e2fsprogs)
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
# zbarimg decodes the QR code `dustmote card` prints (tests/card.rs).
command -v zbarimg >/dev/null || need+=(zbar-tools)
if [ "${#need[@]}" -gt 0 ]; then
    # Postfix asks which mail setup to use; we only need its binaries.
    echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
    extra=()
    # qemu-system-x86 wants the qemu-utils of its own release; a machine
    # with a newer qemu-utils (a backport) must step back to it.
    if printf '%s\n' "${need[@]}" | grep -qx qemu-system-x86; then
        v=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
        extra=(--allow-downgrades "qemu-utils=$v")
    fi
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" "${extra[@]}"
fi
# cloud-init on this machine is only for `cloud-init schema`: it must never
# run at this machine's boot.
[ -e /etc/cloud/cloud-init.disabled ] || $SUDO touch /etc/cloud/cloud-init.disabled 2>/dev/null || true
command -v cargo-deb >/dev/null || cargo install --locked cargo-deb@3.8.0
# Debian starts the daemons it installs; the tests start their own on free
# ports and want none of the system ones holding port 25 or 80.
for svc in postfix nginx tor; do
    $SUDO systemctl stop "$svc" >/dev/null 2>&1 || $SUDO service "$svc" stop >/dev/null 2>&1 || true
done

python3 -c "import aiosmtpd" 2>/dev/null || python3 -m pip install -q "aiosmtpd==1.4.6"
# The OpenMetrics parser that checks /metrics (tests/peers/parse_metrics.py).
python3 -c "import prometheus_client" 2>/dev/null || python3 -m pip install -q "prometheus_client==0.26.0"
# REDbot, the HTTP linter (tests/fetch_e2e.rs checks retrieval with it).
command -v redbot >/dev/null || python3 -m pip install -q "redbot==2.7.1"
# The launcher (deploy/launch) and the EC2 emulator it is tested against.
python3 -c "import libcloud" 2>/dev/null || python3 -m pip install -q "apache-libcloud==3.9.1"
command -v moto_server >/dev/null || python3 -m pip install -q "moto[server]==5.2.5"
