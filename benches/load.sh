#!/usr/bin/env bash
# Side-by-side load benchmark: a direct call to a static upstream, nginx as the equivalent proxy,
# p13n-edge pass-through, p13n-edge fast (cache hit; spool fdatasync per group commit, and with
# spool.sync_interval_ms = 100), a bare pingora proxy answering from memory (the ceiling of a
# hit, examples/ceiling.rs), and p13n-edge in front of its emulator. Alternating, over ROUNDS
# rounds; after a `fast` run the spool is left to drain (every hit's event delivered) before the
# next run, and that time counts in its sustained rate. Each run also reports the CPU time per
# request of the server under test and of the upstream. Prints medians and ratios and writes
# benches/results.md. Then p99 at half of the
# pass-through peak (direct, nginx, pass-through at the same offered rate), pass-through and fast
# in front of an upstream 50 ms away (latency, and every event counted at the upstream), and RSS
# per cached visitor at 100k and 1M visitors. One command, from a fresh checkout:
#   benches/load.sh            (ROUNDS=3 SECONDS_PER_RUN=5 VISITORS="100000 1000000" by default)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
SECS=${SECONDS_PER_RUN:-5}
VISITORS=${VISITORS:-"100000 1000000"}
CONNS=32

need=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v wrk >/dev/null || need+=(wrk)
command -v python3 >/dev/null || need+=(python3)  # free ports, the emulator's stats, the README
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
scripts/setup
cargo build --release -q --bins --example ceiling
BIN=target/release/p13n-edge

work=$(mktemp -d /tmp/p13n-edge-load.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(port); NGX=$(port); PASS=$(port); PASS_ADMIN=$(port); FAST=$(port); FAST_ADMIN=$(port)
FSYNC=$(port); FSYNC_ADMIN=$(port); CEIL=$(port)
EMU=$(port); EMUP=$(port); EMUP_ADMIN=$(port)
FAR=$(port); FARPASS=$(port); FARPASS_ADMIN=$(port); FARFAST=$(port); FARFAST_ADMIN=$(port)
OFFERS='{"offers":{"offer_for_high_loyalty":{"attributes":{"status":"high"},"batch_segments":[{"id":"1588214"}]}}}'
KEY=1/0123456789abcdef0123456789abcdef01234567
TOKEN=1/1/00000000000000000000000000000001
echo "$KEY" > "$work/key"

# The static upstream, and nginx doing p13n-edge's job (keepalive upstream, credentials injected,
# client credentials and cookies dropped): two nginx instances with one worker each, so that the
# nginx proxy, like p13n-edge, talks to an upstream in another process.
nginx_conf() { # name; the http block's servers come on stdin
  {
    cat <<NGX
worker_processes 1;
pid $work/$1.pid;
error_log $work/$1-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/$1-body; proxy_temp_path $work/$1-proxy;
  fastcgi_temp_path $work/$1-fcgi; uwsgi_temp_path $work/$1-uwsgi; scgi_temp_path $work/$1-scgi;
NGX
    cat
    echo "}"
  } > "$work/$1.conf"
}
nginx_conf upstream <<NGX
  server {
    listen 127.0.0.1:$UP;
    location / { default_type application/json; return 200 '$OFFERS'; }
  }
NGX
nginx_conf nginx <<NGX
  upstream p13n { server 127.0.0.1:$UP; keepalive 64; }
  server {
    listen 127.0.0.1:$NGX;
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
"$NGINX" -c "$work/upstream.conf" -g 'daemon off;' & pids+=($!); UP_MASTER=$!
"$NGINX" -c "$work/nginx.conf" -g 'daemon off;' & pids+=($!); NGX_MASTER=$!

proxy_config() { # name port admin upstream mode [spool sync interval ms]
  cat > "$work/$1.toml" <<TOML
[server]
listen = "127.0.0.1:$2"
threads = 1
grace_period_seconds = 0
graceful_shutdown_timeout_seconds = 1
upgrade_sock = "$work/$1.sock"
pid_file = "$work/$1.pid"
[admin]
listen = "127.0.0.1:$3"
[spool]
dir = "$work/$1-spool"
sync_interval_ms = ${6:-0}
[[service]]
name = "bench"
base_url = "http://127.0.0.1:$4"
account_id = "1"
instance_id = "1"
api_key_file = "key"
[service.tokens]
web = "$TOKEN"
[service.cache]
mode = "$5"
[[service.route]]
database = "demo_db"
table = "pageviews"
token = "web"
TOML
}
proxy_config pass "$PASS" "$PASS_ADMIN" "$UP" pass-through
proxy_config fast "$FAST" "$FAST_ADMIN" "$UP" fast
proxy_config fastsync "$FSYNC" "$FSYNC_ADMIN" "$UP" fast 100
proxy_config emu "$EMUP" "$EMUP_ADMIN" "$EMU" pass-through
# In front of an emulator that takes 50 ms to answer, as a distant region would.
proxy_config farpass "$FARPASS" "$FARPASS_ADMIN" "$FAR" pass-through
proxy_config farfast "$FARFAST" "$FARFAST_ADMIN" "$FAR" fast
RUST_LOG=warn $BIN run --config "$work/pass.toml" 2>"$work/pass.log" & pids+=($!); PASS_PID=$!
RUST_LOG=warn $BIN run --config "$work/fast.toml" 2>"$work/fast.log" & pids+=($!); FAST_PID=$!
RUST_LOG=warn $BIN run --config "$work/fastsync.toml" 2>"$work/fastsync.log" & pids+=($!); FSYNC_PID=$!
RUST_LOG=warn target/release/examples/ceiling "127.0.0.1:$CEIL" 2>"$work/ceiling.log" & pids+=($!); CEIL_PID=$!
RUST_LOG=warn $BIN emulator --listen "127.0.0.1:$EMU" --rules conf/demo-rules.toml --threads 1 2>"$work/emu.log" & pids+=($!); EMU_PID=$!
RUST_LOG=warn $BIN run --config "$work/emu.toml" 2>"$work/emup.log" & pids+=($!); EMUP_PID=$!
RUST_LOG=warn $BIN emulator --listen "127.0.0.1:$FAR" --rules conf/demo-rules.toml --threads 1 2>"$work/far.log" & pids+=($!)
RUST_LOG=warn $BIN run --config "$work/farpass.toml" 2>"$work/farpass.log" & pids+=($!)
RUST_LOG=warn $BIN run --config "$work/farfast.toml" 2>"$work/farfast.log" & pids+=($!)
for p in $UP $NGX $PASS $FAST $FSYNC $CEIL $EMU $EMUP $FAR $FARPASS $FARFAST; do
  for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.1; done
done
UP_WORKER=$(pgrep -P "$UP_MASTER"); NGX_WORKER=$(pgrep -P "$NGX_MASTER")

# The process under test for each target and its upstream, for CPU time per request; and the
# admin listener of the targets whose hits go through the spool.
declare -A SERVER=([direct]=$UP_WORKER [nginx]=$NGX_WORKER [pass]=$PASS_PID [fast]=$FAST_PID
  [fastsync]=$FSYNC_PID [ceiling]=$CEIL_PID [emulator]=$EMUP_PID)
declare -A UPSTREAM=([direct]="" [nginx]=$UP_WORKER [pass]=$UP_WORKER [fast]=$UP_WORKER
  [fastsync]=$UP_WORKER [ceiling]="" [emulator]=$EMU_PID)
declare -A SPOOL_ADMIN=([fast]=$FAST_ADMIN [fastsync]=$FSYNC_ADMIN)
cpu_ticks() { [ -n "$1" ] && awk '{print $14 + $15}' "/proc/$1/stat" || echo 0; }
spool_depth() { curl -s "http://127.0.0.1:$1/metrics" | awk '/^p13n_edge_spool_depth / {print $2}'; }
# Wait until the spool is empty (every accepted event delivered); prints the seconds it took.
drain() {
  local start=$(date +%s.%N)
  for _ in $(seq 3000); do [ "$(spool_depth "$1")" = 0 ] && break; sleep 0.1; done
  [ "$(spool_depth "$1")" = 0 ] || { echo "the spool did not drain" >&2; exit 1; }
  awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f", b - a}'
}

declare -A TARGET=(
  [direct]="http://127.0.0.1:$UP/demo_db/pageviews"
  [nginx]="http://127.0.0.1:$NGX/demo_db/pageviews"
  [pass]="http://127.0.0.1:$PASS/demo_db/pageviews"
  [fast]="http://127.0.0.1:$FAST/demo_db/pageviews"
  [fastsync]="http://127.0.0.1:$FSYNC/demo_db/pageviews"
  [ceiling]="http://127.0.0.1:$CEIL/demo_db/pageviews"
  [emulator]="http://127.0.0.1:$EMUP/demo_db/pageviews"
)
ORDER=(direct nginx pass fast fastsync ceiling emulator)
for t in "${ORDER[@]}"; do  # warm up, and check each answers 200
  code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
    -d '{"td_client_id":"42a508e2-d9b1-4baa-9eb2-6c3fb8bd5e16","td_path":"/retail"}' "${TARGET[$t]}")
  [ "$code" = 200 ] || { echo "$t answered $code"; exit 1; }
  wrk -t1 -c$CONNS -d1s -s benches/load/post.lua "${TARGET[$t]}" >/dev/null
done

to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; printf "%.3f", v}'; }
for t in fast fastsync; do drain "${SPOOL_ADMIN[$t]}" >/dev/null; done
declare -A RPS SUST P50 P99 CPU UCPU
for round in $(seq "$ROUNDS"); do
  for t in "${ORDER[@]}"; do
    s0=$(cpu_ticks "${SERVER[$t]}"); u0=$(cpu_ticks "${UPSTREAM[$t]}")
    out=$(wrk -t1 -c$CONNS -d"${SECS}s" --latency -s benches/load/post.lua "${TARGET[$t]}")
    if echo "$out" | grep -q "Non-2xx"; then echo "$t: non-2xx answers"; echo "$out"; exit 1; fi
    waited=0
    [ -n "${SPOOL_ADMIN[$t]:-}" ] && waited=$(drain "${SPOOL_ADMIN[$t]}")
    s1=$(cpu_ticks "${SERVER[$t]}"); u1=$(cpu_ticks "${UPSTREAM[$t]}")
    n=$(echo "$out" | awk '/requests in/ {print $1}')
    took=$(echo "$out" | awk '/requests in/ {print $4}' | tr -d , | to_ms)
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    RPS[$t]+="$rps "
    SUST[$t]+="$(awk -v n="$n" -v ms="$took" -v w="$waited" 'BEGIN {printf "%.2f", n / (ms / 1000 + w)}') "
    P50[$t]+="$(echo "$out" | awk '$1=="50%" {print $2}' | to_ms) "
    P99[$t]+="$(echo "$out" | awk '$1=="99%" {print $2}' | to_ms) "
    CPU[$t]+="$(awk -v a="$s0" -v b="$s1" -v n="$n" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", (b - a) / hz * 1e6 / n}') "
    UCPU[$t]+="$(awk -v a="$u0" -v b="$u1" -v n="$n" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", (b - a) / hz * 1e6 / n}') "
    echo "round $round $t: $rps req/s (spool drained in ${waited}s)" >&2
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
declare -A M S
for t in "${ORDER[@]}"; do M[$t]=$(echo "${RPS[$t]}" | median); S[$t]=$(echo "${SUST[$t]}" | median); done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }

# p99 at half of the pass-through peak: the same offered rate for direct, nginx and pass-through.
HALF=$(awk -v r="${M[pass]}" 'BEGIN {printf "%d", r / 2}')
PACED_CONNS=$(awk -v r="$HALF" 'BEGIN {c = int(r * 0.010 + 0.5); print (c < 1 ? 1 : c)}')
declare -A HRPS HP99
for round in $(seq "$ROUNDS"); do
  for t in direct nginx pass; do
    out=$(wrk -t1 -c"$PACED_CONNS" -d"${SECS}s" --latency -s benches/load/paced.lua "${TARGET[$t]}")
    HRPS[$t]+="$(echo "$out" | awk '/Requests\/sec/ {print $2}') "
    HP99[$t]+="$(echo "$out" | awk '$1=="99%" {print $2}' | to_ms) "
  done
done
declare -A H
for t in direct nginx pass; do H[$t]=$(echo "${HP99[$t]}" | median); done
added() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a - b}'; }

# A distant upstream (the emulator answering after 50 ms): pass-through and fast at the same
# offered rate, paced connections sized for it, and every event counted at the upstream.
FAR_RATE=500
curl -s -X POST -d '{"status":0,"latency_ms":50}' "http://127.0.0.1:$FAR/_emulator/faults" >/dev/null
# Warm up: every visitor of post.lua cached, connections open. One second: `fast` answers hits
# far faster than replay can deliver them 50 ms away (about 640 a second), and the spool must
# drain before the runs.
for t in farpass farfast; do
  port_var=${t^^}; wrk -t1 -c64 -d1s -s benches/load/post.lua "http://127.0.0.1:${!port_var}/demo_db/pageviews" >/dev/null
done
drain "$FARFAST_ADMIN" >/dev/null
far_ingested() { curl -s "http://127.0.0.1:$FAR/_emulator/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["events_ingested"])'; }
declare -A FRPS FP50 FP99 FANSWERED FINGESTED FDRAIN
for round in $(seq "$ROUNDS"); do
  for t in farpass farfast; do
    port_var=${t^^}
    # Each connection waits 10 ms between requests: 60 ms a cycle through the upstream, about
    # 10 from the cache.
    cycle=$([ "$t" = farpass ] && echo 0.060 || echo 0.0105)
    conns=$(awk -v r="$FAR_RATE" -v c="$cycle" 'BEGIN {printf "%d", r * c + 0.5}')
    before=$(far_ingested)
    out=$(wrk -t1 -c"$conns" -d"${SECS}s" --latency -s benches/load/paced.lua "http://127.0.0.1:${!port_var}/demo_db/pageviews")
    if echo "$out" | grep -q "Non-2xx"; then echo "$t: non-2xx answers"; echo "$out"; exit 1; fi
    waited=0
    [ "$t" = farfast ] && waited=$(drain "$FARFAST_ADMIN")
    n=$(echo "$out" | awk '/requests in/ {print $1}')
    FRPS[$t]+="$(echo "$out" | awk '/Requests\/sec/ {print $2}') "
    FP50[$t]+="$(echo "$out" | awk '$1=="50%" {print $2}' | to_ms) "
    FP99[$t]+="$(echo "$out" | awk '$1=="99%" {print $2}' | to_ms) "
    FANSWERED[$t]+="$n "
    FINGESTED[$t]+="$(( $(far_ingested) - before )) "
    FDRAIN[$t]+="$waited "
  done
done

# Memory per cached visitor: RSS of the pass-through proxy before and after N new visitors.
rss() { awk '/VmRSS/ {print $2*1024}' "/proc/$1/status"; }
entries() { curl -s "http://127.0.0.1:$PASS_ADMIN/metrics" | awk '/^p13n_edge_cache_entries / {print $2}'; }
cache_bytes() { curl -s "http://127.0.0.1:$PASS_ADMIN/metrics" | awk '/^p13n_edge_cache_bytes / {print $2}'; }
MEM=""
base_rss=$(rss "$PASS_PID"); base_entries=$(entries); offset=0
for n in $VISITORS; do
  while [ "$(entries)" -lt "$n" ]; do
    wrk -t1 -c$CONNS -d5s -s benches/load/visitors.lua "${TARGET[pass]}" -- $offset >/dev/null
    offset=$((offset + 10000000))
  done
  now_rss=$(rss "$PASS_PID"); now_entries=$(entries); payload=${#OFFERS}
  per=$(( (now_rss - base_rss) / (now_entries - base_entries) ))
  MEM+="| $now_entries | $(( now_rss / 1048576 )) MiB | $per B | $(( per - payload - 35 )) B |"$'\n'
done

machine="$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
{
  echo "Measured $(date -u +%Y-%m-%d) on $machine; wrk 1 thread, $CONNS connections, ${SECS}s x $ROUNDS rounds,"
  echo "alternating targets; medians. Every server has one worker, and the upstream (nginx returning a"
  echo "fixed offers JSON) is a process of its own. \`fast\` answers cache hits (its spool fdatasyncs each"
  echo "group commit before answering), \`fastsync\` the same with \`spool.sync_interval_ms = 100\`; after"
  echo "their runs the spool drains before the next run, and *sustained* counts that time: hits answered"
  echo "and their events delivered. \`ceiling\` is a bare pingora proxy answering from memory"
  echo "(examples/ceiling.rs); \`emulator\` is p13n-edge in front of its own emulator. CPU is the user +"
  echo "system time per request of the server under test and of its upstream, over the run and the drain."
  echo
  echo "| target | req/s | sustained req/s | p50 ms | p99 ms | server CPU µs/req | upstream CPU µs/req |"
  echo "|---|---|---|---|---|---|---|"
  for t in "${ORDER[@]}"; do
    echo "| $t | ${M[$t]} | ${S[$t]} | $(echo "${P50[$t]}" | median) | $(echo "${P99[$t]}" | median) | $(echo "${CPU[$t]}" | median) | $(echo "${UCPU[$t]}" | median) |"
  done
  echo
  echo "| ratio | value |"
  echo "|---|---|"
  echo "| p13n-edge pass-through / nginx | $(ratio "${M[pass]}" "${M[nginx]}") |"
  echo "| p13n-edge pass-through / direct | $(ratio "${M[pass]}" "${M[direct]}") |"
  echo "| nginx / direct | $(ratio "${M[nginx]}" "${M[direct]}") |"
  echo "| p13n-edge fast (hit) / pass-through | $(ratio "${M[fast]}" "${M[pass]}") |"
  echo "| p13n-edge fast (hit) / nginx | $(ratio "${M[fast]}" "${M[nginx]}") |"
  echo "| p13n-edge fast (hit) / ceiling | $(ratio "${M[fast]}" "${M[ceiling]}") |"
  echo "| p13n-edge fast, sustained / nginx | $(ratio "${S[fast]}" "${M[nginx]}") |"
  echo "| p13n-edge fast, sync 100 ms / nginx | $(ratio "${M[fastsync]}" "${M[nginx]}") |"
  echo "| p13n-edge fast, sync 100 ms / ceiling | $(ratio "${M[fastsync]}" "${M[ceiling]}") |"
  echo "| p13n-edge fast, sync 100 ms, sustained / nginx | $(ratio "${S[fastsync]}" "${M[nginx]}") |"
  echo
  echo "p99 at half of the pass-through peak: $PACED_CONNS connections each waiting 10 ms between"
  echo "requests (wrk), the same for each target; medians of $ROUNDS runs."
  echo
  echo "| target | req/s | p99 ms | added p99 over direct |"
  echo "|---|---|---|---|"
  for t in direct nginx pass; do
    echo "| $t | $(echo "${HRPS[$t]}" | median) | ${H[$t]} | $(added "${H[$t]}" "${H[direct]}") ms |"
  done
  echo
  echo "With a distant upstream: the emulator answering after 50 ms, about $FAR_RATE requests/s offered"
  echo "to each (paced connections, 1024 visitors); medians of $ROUNDS runs. Answers and events are"
  echo "totals over the runs; the upstream counts its events once the spool has drained (it can count"
  echo "a few more: requests still in flight when wrk stopped)."
  echo
  echo "| target | req/s | p50 ms | p99 ms | spool drained after | 2xx answers | events at the upstream |"
  echo "|---|---|---|---|---|---|---|"
  total() { tr ' ' '\n' | awk '{s += $1} END {print s}'; }
  for t in farpass farfast; do
    echo "| ${t#far} | $(echo "${FRPS[$t]}" | median) | $(echo "${FP50[$t]}" | median) | $(echo "${FP99[$t]}" | median) | $(echo "${FDRAIN[$t]}" | median) s | $(echo "${FANSWERED[$t]}" | total) | $(echo "${FINGESTED[$t]}" | total) |"
  done
  echo
  echo "Memory per cached visitor (pass-through proxy, RSS growth over the visitors added; the"
  echo "payload is a ${#OFFERS}-byte offers body plus a 35-byte visitor id):"
  echo
  echo "| visitors cached | RSS | RSS per visitor | overhead beyond payload and id |"
  echo "|---|---|---|---|"
  printf "%s" "$MEM"
} | tee benches/results.md

# Show the latest figures in the README, between its benchmark markers.
python3 - <<'PY'
import re
readme = open("README.md").read()
table = open("benches/results.md").read()
readme = re.sub(r"(<!-- bench:start -->\n).*?(<!-- bench:end -->)", lambda m: m.group(1) + table + m.group(2), readme, flags=re.S)
open("README.md", "w").write(readme)
PY
