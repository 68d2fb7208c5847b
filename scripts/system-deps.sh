#!/bin/sh
# Debian packages the test suite needs. Installs only what is missing.
set -eu
need=""
for pkg in $(cat "$(dirname "$0")/system-packages.txt" | grep -v '^#'); do
    dpkg -s "$pkg" >/dev/null 2>&1 || need="$need $pkg"
done
[ -z "$need" ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $need
