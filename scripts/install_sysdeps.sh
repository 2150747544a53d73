#!/usr/bin/env bash
# Install the Debian packages a headless CPU render needs (Mesa EGL + llvmpipe), only when missing.
set -euo pipefail
need=()
ldconfig -p | grep -q 'libEGL.so.1 ' || need+=(libegl1)
ldconfig -p | grep -q 'libEGL_mesa.so.0 ' || need+=(libegl-mesa0)
ldconfig -p | grep -q 'libGL.so.1 ' || need+=(libgl1)
[ -e /usr/lib/x86_64-linux-gnu/dri/swrast_dri.so ] || [ -e /usr/lib/aarch64-linux-gnu/dri/swrast_dri.so ] \
  || ls /usr/lib/*/dri/*swrast* >/dev/null 2>&1 || need+=(libgl1-mesa-dri)
command -v ffmpeg >/dev/null 2>&1 || true  # videos use imageio-ffmpeg's bundled binary
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
echo "lastr1: installing Debian packages for headless rendering: ${need[*]}"
if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
  command -v sudo >/dev/null || { echo "lastr1: need root (or sudo) to apt-get install ${need[*]}; install them and re-run" >&2; exit 1; }
else
  SUDO=
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
