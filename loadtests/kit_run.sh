#!/usr/bin/env bash
# Run a command with a kit made by loadtests/pack_kit.py, on a machine that can fetch nothing.
#
#   loadtests/kit_run.sh KIT COMMAND [ARG...]
#   loadtests/kit_run.sh kit python loadtests/bench_gateway.py --gateway-workers 4 --nginx-workers 4
#
# The first run makes a virtual environment ($KIT_ENV, default /tmp/lastmile-kit-env) from the
# machine's python3 ($KIT_PYTHON), unpacks the kit's site-cpXY.tar.xz into it, puts the
# machine's own packages after the kit's on the path (a .pth file), and unpacks the kit's debs
# (nginx, wrk) under it; later runs reuse it. COMMAND runs with that environment's python first
# on PATH and the repository importable.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 KIT COMMAND [ARG...]   (KIT: the folder loadtests/pack_kit.py wrote)" >&2
  exit 2
fi
kit=$(cd "$1" && pwd)
shift
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${KIT_PYTHON:-python3}
env_dir=${KIT_ENV:-/tmp/lastmile-kit-env}
tag=$("$python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
archive="$kit/site-$tag.tar.xz"
if [ ! -f "$archive" ]; then
  echo "$archive is missing: this machine's $python is $tag; pack the kit for it" \
       "(python loadtests/pack_kit.py --python ${tag:2:1}.${tag:3})" >&2
  exit 2
fi
if [ ! -f "$env_dir/.unpacked-$tag" ]; then
  began=$SECONDS
  rm -rf "$env_dir"
  "$python" -m venv --without-pip "$env_dir"
  site=$("$env_dir/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  tar -xJf "$archive" -C "$site"
  # the machine's own packages, after the kit's (a .pth adds them at the end of sys.path)
  "$python" -c 'import sys; print("\n".join(p for p in sys.path if p.endswith(("site-packages", "dist-packages"))))' \
    > "$site/zz-machine.pth"
  for deb in "$kit"/debs/*.deb; do
    [ -e "$deb" ] && dpkg -x "$deb" "$env_dir/root"
  done
  touch "$env_dir/.unpacked-$tag"
  echo "kit unpacked into $env_dir in $((SECONDS - began)) s" >&2
fi
export PATH="$env_dir/bin:$env_dir/root/usr/sbin:$env_dir/root/usr/bin:$PATH"
export LD_LIBRARY_PATH="$env_dir/root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
cd "$repo"
exec "$@"
