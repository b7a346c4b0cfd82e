#!/usr/bin/env bash
# Installs a veriface .deb into a scratch Debian root (debootstrap, bookworm minbase) and checks
# what the package promises: files, conffile, system user and groups; an upgrade keeps an edited
# config and the records; remove keeps both; purge drops the user and the cache, not the records.
#   bash cross/test-deb.sh target/deb/veriface_<version>_<arch>.deb
# The package's architecture must be the host's (the maintainer scripts run in a chroot), so
# test the amd64 package here; the arm64/armhf ones carry the same scripts and assets.
set -euo pipefail
deb=$(realpath "$1")
cd "$(dirname "$0")/.."
root=target/deb-root
command -v debootstrap >/dev/null || { apt-get update -qq; apt-get install -y -qq debootstrap >/dev/null; }
if [ ! -x "$root/usr/sbin/adduser" ]; then
    rm -rf "$root"
    debootstrap --variant=minbase --include=adduser bookworm "$root" http://deb.debian.org/debian >/dev/null
fi
root=$(realpath "$root")
in_root() { chroot "$root" "$@"; }
check() { if eval "$2"; then echo "ok    $1"; else echo "FAIL  $1"; exit 1; fi; }
in_root dpkg --purge veriface >/dev/null 2>&1 || true
rm -rf "$root/var/lib/veriface"

cp "$deb" "$root/tmp/veriface.deb"
# The same package with a higher version, so the upgrade path (prerm upgrade, new postinst) runs.
rm -rf target/deb-upgrade && dpkg-deb -R "$deb" target/deb-upgrade
sed -i 's/^Version: .*/&+upgradetest/' target/deb-upgrade/DEBIAN/control
dpkg-deb -b target/deb-upgrade "$root/tmp/veriface-next.deb" >/dev/null
in_root dpkg -i /tmp/veriface.deb >/dev/null
check "binary runs in the root" "in_root veriface --version | grep veriface >/dev/null"
check "models found through the installed manifest" "in_root env VERIFACE_MODELS=/usr/share/veriface/models veriface models | grep '^ok    deepfake ' >/dev/null"
check "config is a conffile" "grep -qx /etc/veriface/veriface.toml $root/var/lib/dpkg/info/veriface.conffiles"
check "installed config checks" "in_root veriface config check /etc/veriface/veriface.toml >/dev/null"
check "board profiles installed" "[ \$(ls $root/usr/share/veriface/boards/*.toml | wc -l) -ge 5 ]"
check "systemd unit installed" "grep -q Type=notify $root/usr/lib/systemd/system/veriface.service"
check "system user exists" "in_root getent passwd veriface >/dev/null"
check "user in video, gpio, i2c" "in_root id -nG veriface | tr ' ' '\n' | grep -cE '^(video|gpio|i2c)$' | grep -qx 3"
check "records folder owned by veriface" "[ \$(in_root stat -c %U /var/lib/veriface/records) = veriface ]"

echo 'device_id = "kiosk-7"' >> "$root/etc/veriface/veriface.toml"
echo "record bytes" > "$root/var/lib/veriface/records/veriface-000001.vfr"
in_root dpkg -i /tmp/veriface-next.deb >/dev/null
check "upgraded" "in_root dpkg-query -W -f='\${Version}' veriface | grep upgradetest >/dev/null"
check "upgrade keeps the edited config" "grep -q kiosk-7 $root/etc/veriface/veriface.toml"
check "upgrade keeps the records" "[ -s $root/var/lib/veriface/records/veriface-000001.vfr ]"

in_root dpkg -r veriface >/dev/null
check "remove drops the binary" "[ ! -e $root/usr/bin/veriface ]"
check "remove keeps the config" "grep -q kiosk-7 $root/etc/veriface/veriface.toml"
check "remove keeps the records" "[ -s $root/var/lib/veriface/records/veriface-000001.vfr ]"

in_root dpkg --purge veriface >/dev/null
check "purge drops the config" "[ ! -e $root/etc/veriface/veriface.toml ]"
check "purge drops the system user" "! in_root getent passwd veriface >/dev/null"
check "purge keeps the records (the operator's audit trail)" "[ -s $root/var/lib/veriface/records/veriface-000001.vfr ]"
echo "package checks passed: $(basename "$deb")"
