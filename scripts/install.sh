#!/usr/bin/env bash
# Installs depin-gateway as a hardened systemd service on Raspberry Pi OS (Bookworm, Trixie;
# 64-bit, and 32-bit Bookworm) or Debian, from the checkout this script is in. Run as root:
#
#   sudo scripts/install.sh [--no-keygen] [--no-start] [--no-boot-config]
#
#   --no-keygen       do not create the device key now (an image to be copied to several cards:
#                     each device then makes its own at first boot, depin-gateway-keygen.service)
#   --no-start        install and enable, but do not (re)start the service now
#   --no-boot-config  leave /boot/firmware/config.txt and cmdline.txt alone (I2C, UART)
#
# Idempotent: running it again upgrades the code from the checkout and leaves everything else as
# it is (the configuration, the key and the spool are never replaced). Network: only apt (when a
# package is missing) and pip, from the sources this machine is configured with (PIP_* variables
# such as PIP_FIND_LINKS / PIP_NO_INDEX are honoured).
set -euo pipefail

PREFIX=/opt/depin-gateway
VENV=$PREFIX/venv
ETC=/etc/depin-gateway
STATE=/var/lib/depin-gateway
KEY=$ETC/device.key
CONFIG=$ETC/gateway.toml
UNIT_DIR=/usr/local/lib/systemd/system
UNITS=(depin-gateway.service depin-gateway-firstboot.service depin-gateway-keygen.service)
UDEV_RULES=/etc/udev/rules.d/99-depin-gateway.rules
MODULES_LOAD=/etc/modules-load.d/depin-gateway.conf
BOOT=${DEPIN_BOOT_DIR:-/boot/firmware}
USER_NAME=depin-gateway

keygen=1
start=1
boot_config=1
for arg in "$@"; do
  case $arg in
    --no-keygen) keygen=0 ;;
    --no-start) start=0 ;;
    --no-boot-config) boot_config=0 ;;
    -h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
  esac
done

say() { printf 'install.sh: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (sudo $0)"
SRC=$(cd "$(dirname "$0")/.." && pwd)
if [ ! -f "$SRC/pyproject.toml" ] || [ ! -f "$SRC/systemd/depin-gateway.service" ]; then
  die "$SRC does not look like a depin-gateway checkout"
fi

# --- the system -----------------------------------------------------------------------------
codename=unknown
# shellcheck disable=SC1091
[ -r /etc/os-release ] && codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-unknown}")
arch=$(dpkg --print-architecture 2>/dev/null || uname -m)
case $codename in
  bookworm | trixie) ;;
  *) say "warning: tested on Raspberry Pi OS / Debian bookworm and trixie, this is '$codename'" ;;
esac
systemd_running=0
[ -d /run/systemd/system ] && systemd_running=1

# --- Debian packages (only those missing) ------------------------------------------------------
need=()
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
command -v python3 >/dev/null || need+=(python3)
# 32-bit: the TFLite runtime needs numpy < 2, which PyPI has no armhf wheel of; Debian's fits.
if [ "$arch" = armhf ] && ! python3 -c 'import numpy' 2>/dev/null; then
  need+=(python3-numpy)
fi
if [ ${#need[@]} -gt 0 ]; then
  say "installing Debian packages: ${need[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi

# --- user and groups ----------------------------------------------------------------------------
# i2c exists on Raspberry Pi OS; on plain Debian only with i2c-tools. The unit's
# SupplementaryGroups= fails the service (216/GROUP) when a group is missing.
for group in dialout i2c; do
  getent group "$group" >/dev/null || groupadd --system "$group"
done
if ! getent passwd "$USER_NAME" >/dev/null; then
  useradd --system --user-group --home-dir "$STATE" --no-create-home \
    --shell /usr/sbin/nologin --comment "depin-gateway daemon" "$USER_NAME"
fi
# Membership too, for `sudo -u depin-gateway depin-gateway probe` (the unit sets them itself).
usermod --append --groups dialout,i2c "$USER_NAME"

# --- I2C and the UART (without a serial console) ----------------------------------------------
reboot_needed=0
set_config_txt() {
  # Our lines in one marked block at the end under [all], so they win over earlier ones and
  # a second run replaces the block instead of adding another.
  local file=$1 tmp
  tmp=$(mktemp "$file.XXXXXX")
  awk '/^# depin-gateway: begin/ { skip = 1 }
       !skip { lines[++n] = $0 }
       /^# depin-gateway: end/ { skip = 0 }
       END { while (n > 0 && lines[n] == "") n--; for (i = 1; i <= n; i++) print lines[i] }' \
    "$file" >"$tmp"
  cat >>"$tmp" <<'EOF'

# depin-gateway: begin (scripts/install.sh; I2C for the sensors, the UART without a console)
[all]
dtparam=i2c_arm=on
enable_uart=1
# depin-gateway: end
EOF
  if ! cmp -s "$file" "$tmp"; then
    [ -e "$file.depin-gateway.orig" ] || cp -p "$file" "$file.depin-gateway.orig"
    cat "$tmp" >"$file"
    reboot_needed=1
  fi
  rm -f "$tmp"
}
set_cmdline_txt() {
  # One line; remove console=serial0,... (and ttyAMA0/ttyS0), which would talk over the sensor.
  local file=$1 new
  new=$(awk '{ out = ""
                for (i = 1; i <= NF; i++)
                  if ($i !~ /^console=(serial0|serial1|ttyAMA0|ttyS0)(,.*)?$/)
                    out = out (out == "" ? "" : " ") $i
                print out; exit }' "$file")
  if [ "$new" != "$(cat "$file")" ]; then
    [ -e "$file.depin-gateway.orig" ] || cp -p "$file" "$file.depin-gateway.orig"
    printf '%s\n' "$new" >"$file"
    reboot_needed=1
  fi
}
if [ $boot_config -eq 1 ]; then
  if command -v raspi-config >/dev/null && [ "$BOOT" = /boot/firmware ]; then
    # 0 = enable in raspi-config's nonint convention; do_serial_cons 1 = no login console.
    before=$(cat "$BOOT/config.txt" "$BOOT/cmdline.txt" 2>/dev/null | md5sum)
    raspi-config nonint do_i2c 0
    if raspi-config nonint do_serial_hw 0 2>/dev/null; then
      raspi-config nonint do_serial_cons 1
    else
      raspi-config nonint do_serial 2 # older raspi-config: hardware on, console off
    fi
    after=$(cat "$BOOT/config.txt" "$BOOT/cmdline.txt" 2>/dev/null | md5sum)
    [ "$before" = "$after" ] || reboot_needed=1
  elif [ -f "$BOOT/config.txt" ]; then
    set_config_txt "$BOOT/config.txt"
    [ -f "$BOOT/cmdline.txt" ] && set_cmdline_txt "$BOOT/cmdline.txt"
  else
    say "no $BOOT/config.txt: not a Raspberry Pi, leaving I2C and the UART alone"
  fi
fi

# --- the code: a venv of its own (PEP 668), the project from this checkout, non-editable -------
install -d -m 0755 "$PREFIX"
if [ -x "$VENV/bin/python" ] && ! "$VENV/bin/python" -c '' 2>/dev/null; then
  say "the venv's Python is gone (an OS upgrade?): making a new venv"
  rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
  if [ "$arch" = armhf ]; then
    # numpy from Debian (< 2) for tflite-runtime
    python3 -m venv --system-site-packages "$VENV"
  else
    python3 -m venv "$VENV"
  fi
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Build from a copy: the checkout may be read-only, and setuptools writes build/ and *.egg-info.
tar -C "$SRC" --exclude=./.git --exclude=./.venv --exclude=./build --exclude='*.egg-info' \
  --exclude=__pycache__ --exclude=./.mypy_cache --exclude=./.ruff_cache \
  --exclude=./.pytest_cache --exclude=./.hypothesis -cf - . | tar -C "$work" -xf -
pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
extra=()
constraints=()
target="${work}[litert]"  # with ai-edge-litert, the TFLite runtime of 64-bit systems
if [ "$arch" = armhf ]; then
  target=$work
  echo 'numpy<2' >"$work/constraints.txt"
  constraints=(--constraint "$work/constraints.txt")
  pyver=$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  if [ "$pyver" = 3.11 ]; then
    extra=(tflite-runtime)
  else
    say "warning: no TFLite runtime for 32-bit Python $pyver: tflite modules will not load"
  fi
fi
"${pip[@]}" install -q --upgrade "${constraints[@]}" "$target" "${extra[@]}"
# what the unit's Documentation= points at
install -d -m 0755 "$PREFIX/docs"
install -m 0644 "$SRC/docs/raspberry-pi.md" "$PREFIX/docs/raspberry-pi.md"

# --- units, udev rules, modules --------------------------------------------------------------
install -d -m 0755 "$UNIT_DIR" /etc/udev/rules.d /etc/modules-load.d
for unit in "${UNITS[@]}"; do
  install -m 0644 "$SRC/systemd/$unit" "$UNIT_DIR/$unit"
done
install -m 0644 "$SRC/udev/99-depin-gateway.rules" "$UDEV_RULES"
install -m 0644 "$SRC/systemd/depin-gateway.modules-load.conf" "$MODULES_LOAD"
for module in i2c-dev usbserial cdc_acm; do
  modprobe -q "$module" 2>/dev/null || true # no such module in a container: loaded at boot
done
if command -v udevadm >/dev/null && [ -d /run/udev ]; then
  udevadm control --reload 2>/dev/null || true
  udevadm trigger --subsystem-match=tty --subsystem-match=i2c-dev 2>/dev/null || true
fi

# --- configuration, state, key ----------------------------------------------------------------
install -d -m 0755 -o root -g root "$ETC"
install -d -m 0700 -o "$USER_NAME" -g "$USER_NAME" "$STATE"
if [ ! -e "$CONFIG" ]; then
  tmp=$(mktemp "$CONFIG.XXXXXX")
  "$VENV/bin/depin-gateway" config sample \
    | sed -e "s|^key_file = \"device.key\"|key_file = \"$KEY\"|" \
      -e "s|^path = \"spool.db\"|path = \"$STATE/spool.db\"|" >"$tmp"
  if ! grep -q "^key_file = \"$KEY\"" "$tmp" || ! grep -q "^path = \"$STATE/spool.db\"" "$tmp"; then
    rm -f "$tmp"
    die "could not set key_file and path in the sample configuration"
  fi
  chown "root:$USER_NAME" "$tmp"
  chmod 0640 "$tmp"
  mv "$tmp" "$CONFIG"
  say "wrote a sample configuration to $CONFIG (a simulated sensor, a broker on this machine):"
  say "  edit it (\`depin-gateway probe\` prints [[sensor]] tables), then: systemctl restart depin-gateway"
fi
"$VENV/bin/depin-gateway" config check "$CONFIG" >/dev/null \
  || say "warning: $CONFIG has errors (above); the service will not start until they are fixed"
if [ ! -e "$KEY" ] && [ $keygen -eq 1 ]; then
  (umask 077 && "$VENV/bin/depin-gateway" keygen --key "$KEY")
fi
if [ -e "$KEY" ]; then
  chown root:root "$KEY"
  chmod 0600 "$KEY"
fi

# --- enable and start -----------------------------------------------------------------------
if [ $systemd_running -eq 1 ]; then
  systemctl daemon-reload
fi
systemctl enable --quiet "${UNITS[@]}"
if [ $systemd_running -eq 1 ] && [ $start -eq 1 ]; then
  systemctl restart depin-gateway.service \
    || say "warning: depin-gateway did not start: journalctl -u depin-gateway -b"
fi
if [ -e "$KEY" ]; then
  "$VENV/bin/depin-gateway" identity show --key "$KEY"
else
  say "no device key yet: it is made at first boot (journalctl -u depin-gateway-keygen)"
fi
[ $reboot_needed -eq 0 ] || say "I2C / UART settings changed: reboot to apply them"
say "done"
