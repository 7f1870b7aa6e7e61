#!/usr/bin/env bash
# Removes what scripts/install.sh installed: the units, the venv under /opt/depin-gateway, the
# udev rules and the modules-load file. Keeps the device key and configuration
# (/etc/depin-gateway) and the spool (/var/lib/depin-gateway), so a reinstall carries on with
# the same identity and delivers what was still waiting, unless --purge is given: then those go
# too, with the depin-gateway user. Run as root:
#
#   sudo scripts/uninstall.sh [--purge]
#
# I2C and UART settings in /boot/firmware are left as they are (install.sh kept the originals
# as config.txt.depin-gateway.orig and cmdline.txt.depin-gateway.orig). Idempotent.
set -euo pipefail

PREFIX=/opt/depin-gateway
ETC=/etc/depin-gateway
STATE=/var/lib/depin-gateway
UNIT_DIR=/usr/local/lib/systemd/system
UNITS=(depin-gateway.service depin-gateway-firstboot.service depin-gateway-keygen.service)
USER_NAME=depin-gateway

purge=0
for arg in "$@"; do
  case $arg in
    --purge) purge=1 ;;
    -h | --help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "uninstall.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
  esac
done
say() { printf 'uninstall.sh: %s\n' "$*" >&2; }
[ "$(id -u)" -eq 0 ] || { say "error: run as root"; exit 1; }

systemd_running=0
[ -d /run/systemd/system ] && systemd_running=1
if [ $systemd_running -eq 1 ]; then
  systemctl stop "${UNITS[@]}" 2>/dev/null || true
fi
for unit in "${UNITS[@]}"; do
  if [ -e "$UNIT_DIR/$unit" ]; then
    systemctl disable --quiet "$unit" 2>/dev/null || true
  fi
  rm -f "$UNIT_DIR/$unit"
done
[ $systemd_running -eq 0 ] || systemctl daemon-reload
rm -f /etc/udev/rules.d/99-depin-gateway.rules /etc/modules-load.d/depin-gateway.conf
if command -v udevadm >/dev/null && [ -d /run/udev ]; then
  udevadm control --reload 2>/dev/null || true
fi
rm -rf "$PREFIX"

if [ $purge -eq 1 ]; then
  rm -rf "$ETC" "$STATE"
  if getent passwd "$USER_NAME" >/dev/null; then
    userdel "$USER_NAME"
  fi
  if getent group "$USER_NAME" >/dev/null; then
    groupdel "$USER_NAME"
  fi
  say "removed, with the key, the configuration and the spool"
else
  say "removed; kept the key and configuration ($ETC) and the spool ($STATE); --purge removes them"
fi
