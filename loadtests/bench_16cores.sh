#!/usr/bin/env bash
# The measurements that need a machine with cores to spare, in one go (about 9 minutes), each
# side on CPUs of its own. Needs 16 CPUs; run it with the repository's environment, or through
# a kit on a machine that can fetch nothing (loadtests/pack_kit.py):
#
#   PYTHON=.venv/bin/python loadtests/bench_16cores.sh OUT  # with the repository's .venv
#   loadtests/kit_run.sh kit loadtests/bench_16cores.sh OUT # with a kit (loadtests/pack_kit.py)
#
# Most important first, each report written to OUT as soon as it is done (NAME.txt, with
# its progress and errors in NAME.log):
#   1. bench_gateway.py: gateway (4 processes) vs nginx (4 workers) vs direct Triton, HTTP JSON
#      and binary, gRPC, 1 and 16 clients, canary/shadow/capture; proxies on 0-3, Triton on
#      4-11, clients on 12-15;
#   2. bench_shadow.py: the primary's p99 with a slow and a compute-heavy shadow candidate on a
#      server of its own vs none; servers on 0-3 and 4-7, gateway (4 processes) on 8-11,
#      clients on 12-15;
#   3. bench_shadow_burst.py: the gateway alone on 0-1 with a slow shadow's bursts, stand-ins
#      on 6-7, clients on 2-5;
#   4. bench_gateway.py again, HTTP JSON at one client only, 9 rounds: the added latency's
#      median with a spread that 3 rounds cannot give.
set -uo pipefail
if [ $# -ne 1 ]; then
  echo "usage: $0 OUT   (a folder for the reports)" >&2
  exit 2
fi
out=$1
mkdir -p "$out"
cpus=$(nproc)
if [ "$cpus" -lt 16 ]; then
  echo "this needs 16 CPUs (this machine has $cpus): the sides would share cores" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}  # under kit_run.sh: the kit's; else say PYTHON=.venv/bin/python
export PYTHONUNBUFFERED=1
status=0
run() {  # NAME COMMAND...: the report to OUT/NAME.txt, progress and errors to OUT/NAME.log
  local name=$1
  shift
  local began=$SECONDS
  echo "== $name: $*" >&2
  if "$@" >"$out/$name.txt" 2>"$out/$name.log"; then
    echo "== $name done in $((SECONDS - began)) s" >&2
  else
    status=1
    echo "== $name FAILED after $((SECONDS - began)) s; the end of its log:" >&2
    tail -20 "$out/$name.log" >&2
  fi
}
run gateway "$py" loadtests/bench_gateway.py --gateway-workers 4 --nginx-workers 4 \
  --proxy-cpus 0-3 --triton-cpus 4-11 --client-cpus 12-15 --rounds 3 --seconds 2
run shadow "$py" loadtests/bench_shadow.py --phases slow,heavy --candidate-servers 1 \
  --triton-cpus '0-3;4-7' --gateway-workers 4 --gateway-cpus 8-11 --client-cpus 12-15 \
  --rounds 3 --seconds 5 --load 0.3 --clients 8
run burst "$py" loadtests/bench_shadow_burst.py --gateway-cpus 0-1 --client-cpus 2-5 \
  --fake-cpus 6-7 --loop-probe --rate 165 --burst 256 --rounds 4 --seconds 4
run latency "$py" loadtests/bench_gateway.py --protocols http-json --clients 1 --rounds 9 \
  --seconds 2 --proxy-cpus 0 --triton-cpus 4-11 --client-cpus 12-15
exit $status
