#!/usr/bin/env bash
# Instructions per request, counted by callgrind: unlike req/s or CPU time, the count does not
# depend on the machine's speed or on its neighbours' load. For each server (p13n-edge
# pass-through in front of a static nginx upstream, the same in `fast` mode (its spool drained
# before the stop), examples/ceiling, examples/serve_ceiling, and nginx doing p13n-edge's job
# in front of the same upstream), a fresh process under
# `valgrind --tool=callgrind` answers N1 requests and stops; another answers N2. Both see the
# same start, connections and shutdown, so (Ir(N2) - Ir(N1)) / (N2 - N1) is the cost of one
# request: every thread of the server counted (pingora's worker, p13n-edge's admin and
# background threads too), the upstream not (it runs natively). The requests come from h2load
# over HTTP/1.1, 4 connections, one visitor's event. Prints a markdown table on stdout, progress
# on stderr. benches/load.sh runs it as its `callgrind` section; alone:
#   benches/callgrind.sh       (N1=2000 N2=6000 by default; SKIP_BUILD=1, BIN_DIR as load.sh)
# COUNT=syscalls counts system calls instead, the same way, under `strace -f -c` (the kernel's
# side, which callgrind does not see): calls per request and the most frequent ones.
# Background work that ticks with time (timers, replay polling) is counted too, and the N2 run
# lasts longer; it is small against the requests' instructions, but it is not zero.
set -euo pipefail
cd "$(dirname "$0")/.."
N1=${N1:-2000}
N2=${N2:-6000}
TARGETS=${CALLGRIND_TARGETS:-"pass fast ceiling serve-ceiling nginx"}
COUNT=${COUNT:-instructions}
[[ $COUNT == instructions || $COUNT == syscalls ]] || { echo "COUNT: instructions or syscalls, not $COUNT" >&2; exit 2; }
BIN_DIR=${BIN_DIR:-target/release}

need=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v valgrind >/dev/null || need+=(valgrind)
command -v python3 >/dev/null || need+=(python3)  # free ports
[ "$COUNT" != syscalls ] || command -v strace >/dev/null || need+=(strace)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  scripts/setup
  cargo build --release -q --bins --example ceiling --example serve_ceiling
fi

work=$(mktemp -d /tmp/p13n-edge-callgrind.XXXXXX)
upstream=""; current=""  # the upstream nginx, and the server under callgrind while it runs
# CALLGRIND_KEEP=dir keeps callgrind's output files there, for callgrind_annotate.
cleanup() {
  for p in $current $upstream; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
  [ -z "${CALLGRIND_KEEP:-}" ] || { mkdir -p "$CALLGRIND_KEEP"; cp "$work"/callgrind.*.out "$CALLGRIND_KEEP"/ 2>/dev/null || true; }
  rm -rf "$work"
}
trap cleanup EXIT

# Free ports on 127.0.0.1, all distinct: each socket stays bound until all are picked.
ports() { python3 -c 'import socket,sys; s=[socket.socket() for _ in range(int(sys.argv[1]))]; [x.bind(("127.0.0.1",0)) for x in s]; print(*[x.getsockname()[1] for x in s])' "$1"; }
listening() { (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
UP=$(ports 1)
OFFERS='{"offers":{"offer_for_high_loyalty":{"attributes":{"status":"high"},"batch_segments":[{"id":"1588214"}]}}}'
KEY=1/0123456789abcdef0123456789abcdef01234567
TOKEN=1/1/00000000000000000000000000000001
echo "$KEY" > "$work/key"
printf '%s' '{"td_client_id":"42a508e2-d9b1-4baa-9eb2-6c3fb8bd5e16","td_path":"/retail"}' > "$work/body.json"

# The same configurations as load.sh: the static upstream (native, not counted), nginx doing
# p13n-edge's job in one process (no master: valgrind follows that process only), p13n-edge
# pass-through with one worker and no grace period, so that SIGTERM stops it at once.
. benches/load/nginx.sh
nginx_conf upstream <<NGX
  server {
    listen 127.0.0.1:$UP;
    location / { default_type application/json; return 200 '$OFFERS'; }
  }
NGX
nginx_proxy_conf() { # port
  nginx_conf nginx <<NGX
  upstream p13n { server 127.0.0.1:$UP; keepalive 64; }
  server {
    listen 127.0.0.1:$1;
    location = /demo_db/pageviews {
      proxy_pass http://p13n;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host 127.0.0.1:$UP;
      proxy_set_header Authorization "TD1 $KEY";
      proxy_set_header WP13n-Token "$TOKEN";
      proxy_set_header Content-Type application/vnd.treasuredata.v1+json;
      proxy_set_header Cookie "";
    }
  }
NGX
}
pass_conf() { # port admin-port [mode]
  cat > "$work/pass.toml" <<TOML
[server]
listen = "127.0.0.1:$1"
threads = 1
grace_period_seconds = 0
graceful_shutdown_timeout_seconds = 1
upgrade_sock = "$work/pass.sock"
pid_file = "$work/pass.pid"
[admin]
listen = "127.0.0.1:$2"
[spool]
dir = "$work/pass-spool"
[[service]]
name = "bench"
base_url = "http://127.0.0.1:$UP"
account_id = "1"
instance_id = "1"
api_key_file = "key"
[service.tokens]
web = "$TOKEN"
[service.cache]
mode = "${3:-pass-through}"
[[service.route]]
database = "demo_db"
table = "pageviews"
token = "web"
TOML
}
"$NGINX" -c "$work/upstream.conf" -g 'daemon off;' & upstream=$!
for _ in $(seq 100); do listening "$UP" && break; sleep 0.1; done

# Events still waiting in a spool, read from outside (`spool inspect`, a process of its own):
# asking the server itself would add its own work to the count, more of it the longer the drain.
pending() { "$BIN_DIR/p13n-edge" spool inspect --dir "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pending"]["events"])'; }
drained() { for _ in $(seq 600); do [ "$(pending "$1")" = 0 ] && return 0; sleep 0.1; done; return 1; }

# One server under callgrind answering n requests, stopped gracefully: its Ir total in IR.
count() { # target n
  local p admin out cmd sig=TERM file="$work/callgrind.$1.$2.out"
  # strace's summaries apart from callgrind's files (CALLGRIND_KEEP keeps only those).
  [ "$COUNT" != syscalls ] || file="$work/strace.$1.$2.out"
  read -r p admin <<< "$(ports 2)"  # the upstream listens: neither can be its port
  case $1 in
    pass|fast) pass_conf "$p" "$admin" "$([ "$1" = fast ] && echo fast)"; rm -rf "$work/pass-spool"
      cmd=("$BIN_DIR/p13n-edge" run --config "$work/pass.toml") ;;
    ceiling) cmd=("$BIN_DIR/examples/ceiling" "127.0.0.1:$p") ;;
    serve-ceiling) cmd=("$BIN_DIR/examples/serve_ceiling" "127.0.0.1:$p") ;;
    nginx) nginx_proxy_conf "$p"; sig=QUIT  # nginx's graceful shutdown
      cmd=("$NGINX" -c "$work/nginx.conf" -g 'daemon off; master_process off;') ;;
  esac
  if [ "$COUNT" = syscalls ]; then
    RUST_LOG=warn strace -f -qq -c -U calls,name -o "$file" "${cmd[@]}" 2>"$work/$1.$2.log" & current=$!
  else
    RUST_LOG=warn valgrind --tool=callgrind --dump-instr=no --callgrind-out-file="$file" \
      "${cmd[@]}" 2>"$work/$1.$2.log" & current=$!
  fi
  for _ in $(seq 600); do listening "$p" && break; sleep 0.1; done
  listening "$p" || { echo "$1 under $COUNT counting does not listen" >&2; tail "$work/$1.$2.log" >&2; exit 1; }
  out=$(h2load --h1 -n "$2" -c 4 -d "$work/body.json" -H 'Content-Type: application/json' \
    "http://127.0.0.1:$p/demo_db/pageviews")
  echo "$out" | grep -q "status codes: $2 2xx" || { echo "$1: not every answer 2xx"; echo "$out"; exit 1; } >&2
  # `fast`: every hit's event delivered (replay counted) before the stop.
  [ "$1" != fast ] || drained "$work/pass-spool" || { echo "fast: the spool did not drain" >&2; exit 1; }
  # strace, signalled, would pass the signal on but detach and summarise at once, leaving the
  # server's shutdown uncounted: the server itself (strace's child) is told to stop.
  if [ "$COUNT" = syscalls ]; then
    pkill -"$sig" -P "$current" || { echo "$1: the server under strace is gone" >&2; exit 1; }
  else
    kill -"$sig" "$current"
  fi
  wait "$current" || true
  current=""
  [ -s "$file" ] || { echo "$1: $COUNT counted nothing" >&2; tail "$work/$1.$2.log" >&2; exit 1; }
  if [ "$COUNT" = syscalls ]; then
    # Each system call's count ("calls name" lines; the last is the total).
    CALLS=$(awk 'NF == 2 && $1 ~ /^[0-9]+$/ && $2 != "total" {print $2 "=" $1}' "$file" | tr '\n' ' ')
    IR=$(awk 'NF == 2 && $2 == "total" {print $1}' "$file")
  else
    IR=$(awk '/^(summary|totals):/ {print $2; exit}' "$file")
  fi
  [ -n "$IR" ] || { echo "$1: no total in $COUNT's output" >&2; tail "$file" >&2; exit 1; }
}

declare -A PER IR1 IR2 C1 C2
for t in $TARGETS; do
  start=$SECONDS
  count "$t" "$N1"; IR1[$t]=$IR; C1[$t]=${CALLS:-}
  count "$t" "$N2"; IR2[$t]=$IR; C2[$t]=${CALLS:-}
  PER[$t]=$(awk -v a="${IR1[$t]}" -v b="${IR2[$t]}" -v n1="$N1" -v n2="$N2" 'BEGIN {printf (b - a) / (n2 - n1) < 100 ? "%.2f" : "%d", (b - a) / (n2 - n1)}')
  echo "$COUNT $t: ${PER[$t]} a request ($((SECONDS - start)) s)" >&2
done

per() { [ -n "${PER[$2]:-}" ] && awk -v a="$1" -v b="${PER[$2]}" 'BEGIN {printf "%.2f", a / b}' || echo "-"; }
if [ "$COUNT" = syscalls ]; then
  echo "System calls per request (strace -f -c, all threads of the server; the upstream not"
  echo "counted): a fresh process answers $N1, another $N2 requests (h2load over HTTP/1.1, 4"
  echo "connections, one visitor's event) and stops gracefully; per request is the difference over"
  echo "$((N2 - N1)) requests. Under strace every call is slower, and how many calls a request"
  echo "takes depends on timing: \`epoll_wait\` (a thread waiting with nothing to do) most, and"
  echo "futex waits and wakes, reads that find nothing yet and timer wake-ups too. Not a"
  echo "load-independent count, as the instructions are: a rough one, for comparing servers."
  echo
  echo "| server | system calls per request | / pass | / nginx | the most, per request |"
  echo "|---|---|---|---|---|"
  for t in $TARGETS; do
    most=$(awk -v a="${C1[$t]}" -v b="${C2[$t]}" -v n="$((N2 - N1))" 'BEGIN {
      split(a, x, " "); for (i in x) { split(x[i], kv, "="); c[kv[1]] -= kv[2] }
      split(b, y, " "); for (i in y) { split(y[i], kv, "="); c[kv[1]] += kv[2] }
      for (k in c) if (c[k] / n >= 0.05) printf "%s %.2f\n", k, c[k] / n }' | sort -k2,2gr | head -6 | paste -sd, - | sed 's/,/, /g')
    echo "| $t | ${PER[$t]} | $(per "${PER[$t]}" pass) | $(per "${PER[$t]}" nginx) | $most |"
  done
  exit 0
fi

echo "Instructions per request (callgrind, all threads of the server; the upstream not counted):"
echo "a fresh process answers $N1, another $N2 requests (h2load over HTTP/1.1, 4 connections, one"
echo "visitor's event) and stops gracefully; per request is the difference over $((N2 - N1)) requests."
echo "\`fast\` answers from its cache (but the first request) and its spool drains before the stop:"
echo "its count is a hit's, its event's append, replay and upstream call included. Counts, not"
echo "times: they do not move with the machine's load (nor do they count the kernel's work)."
echo
echo "| server | Ir, $N1 requests | Ir, $N2 requests | instructions per request | / pass | / nginx |"
echo "|---|---|---|---|---|---|"
for t in $TARGETS; do
  echo "| $t | ${IR1[$t]} | ${IR2[$t]} | ${PER[$t]} | $(per "${PER[$t]}" pass) | $(per "${PER[$t]}" nginx) |"
done
