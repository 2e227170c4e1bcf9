#!/usr/bin/env bash
# Side-by-side load benchmark: a direct call to a static upstream, nginx and HAProxy as the
# equivalent proxies, p13n-edge pass-through, p13n-edge fast (cache hit; spool fdatasync per
# group commit, and with spool.sync_interval_ms = 100), a bare pingora proxy answering from memory
# (the ceiling of a hit, examples/ceiling.rs), the same on pingora-core's HttpServerApp without
# pingora-proxy (examples/serve_ceiling.rs), and p13n-edge in front of its emulator. Alternating,
# over ROUNDS rounds; after a `fast` run the spool is left to drain (every hit's event delivered)
# before the next run, and that time counts in its sustained rate. Each run also reports the CPU
# time per request of the server under test and of the upstream, and p13n-edge's split by thread
# (answering, spool writer, replay, the rest). Prints medians and ratios and
# writes benches/results.md. Then, by section:
#   main      the table above
#   half      p99 at half of the pass-through peak (direct, nginx, pass-through, same offered rate)
#   far       pass-through and fast in front of an upstream 50 ms away, ~500 req/s (latency, and
#             every event counted at the upstream)
#   rates     fast in front of that upstream at 2,000 and 5,000 events/s for RATE_SECONDS (10)
#             each, default settings, each with independent (Poisson) and in-step (fixed)
#             arrivals (ARRIVALS="poisson fixed"): p99, spool depth when the load ends, time to
#             drain, events lost, the spool's commits; beside each, the same clients against the
#             static upstream (the network's floor) and a bare group commit (the disk's,
#             examples/commit_floor.rs)
#   protocol  the same at 2,000 events/s over HTTP/1.1 and over HTTP/2 to the upstream
#             (connections opened, p99, CPU per answer)
#   quota     fast with max_events_per_second = 500 in front of its own 50 ms emulator, 2,000
#             events/s offered: the most calls the upstream saw in one second
#   tls       the browser-facing path, TLS + HTTP/2 (h2load): p13n-edge, nginx, HAProxy
#   memory    RSS per cached visitor at 100k and 1M visitors
#   shared    two instances behind round-robin, with and without the shared tier (redis-server):
#             hit rate of returning visitors, p50/p99, the cost of a shared lookup
#   callgrind instructions per request, machine-independent, and system calls per request
#             (benches/callgrind.sh)
# One command, from a fresh checkout:
#   benches/load.sh            (ROUNDS=3 SECONDS_PER_RUN=5 VISITORS="100000 1000000" by default)
# SECTIONS="far rates" runs only those (default: all) and prints their tables, leaving
# benches/results.md and the README's as they are; SKIP_BUILD=1 skips `cargo build` and
# BIN_DIR (default target/release) says where the binaries are. STEAL_LIMIT (2, in %) and
# TRIES (3): a main, half, far, rates, protocol or tls run during which the host took more of
# the CPU is run again (the tables give each round's share stolen and how many runs were repeated). The
# script fails on a lost event (more 2xx answers than events at the upstream), not on a target
# missed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
SECS=${SECONDS_PER_RUN:-5}
VISITORS=${VISITORS:-"100000 1000000"}
ALL_SECTIONS="main half far rates protocol quota tls memory shared callgrind"
SECTIONS=${SECTIONS:-$ALL_SECTIONS}
RATES=${RATES:-"2000 5000"}
ARRIVALS=${ARRIVALS:-"poisson fixed"}
for a in $ARRIVALS; do [[ $a == poisson || $a == fixed ]] || { echo "ARRIVALS: poisson or fixed, not $a" >&2; exit 2; }; done
# The rates section sets the arrivals its runs use; every other section's are fixed.
unset PACING
RATE_SECS=${RATE_SECONDS:-10}
BIN_DIR=${BIN_DIR:-target/release}
CONNS=32
# A run during which the hypervisor gave more than STEAL_LIMIT% of the machine's CPU time to
# other guests (steal) is run again, up to TRIES times in all (the main, half, far, rates, protocol
# and tls sections); the tables say how many were.
STEAL_LIMIT=${STEAL_LIMIT:-2}
TRIES=${TRIES:-3}
[[ $TRIES =~ ^[1-9][0-9]*$ ]] || { echo "TRIES: a whole number from 1, not $TRIES" >&2; exit 2; }
[[ $STEAL_LIMIT =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "STEAL_LIMIT: a share in %, not $STEAL_LIMIT" >&2; exit 2; }
REPEATED=0
calm() { awk -v s="$1" -v l="$STEAL_LIMIT" 'BEGIN {exit !(s <= l)}'; }
# After try $1 of a run: whether to run it again (more than STEAL_LIMIT% stolen, $2, and tries
# left), counted and said with what the try measured ($3).
again() {
  calm "$2" && return 1
  (( $1 == TRIES )) && return 1
  REPEATED=$((REPEATED + 1))
  echo "$3 with $2% of the machine's CPU stolen, over STEAL_LIMIT=$STEAL_LIMIT%: run again" >&2
}
has() { [[ " $SECTIONS " == *" $1 "* ]]; }

need=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v wrk >/dev/null || need+=(wrk)
command -v h2load >/dev/null || need+=(nghttp2-client)  # TLS + HTTP/2, and callgrind's counts
command -v valgrind >/dev/null || need+=(valgrind)      # callgrind
command -v strace >/dev/null || need+=(strace)          # system calls per request
command -v openssl >/dev/null || need+=(openssl)        # the TLS section's throwaway certificate
command -v curl >/dev/null || need+=(curl)
command -v redis-server >/dev/null || need+=(redis-server)  # the shared tier's server
command -v python3 >/dev/null || need+=(python3)  # free ports, the emulator's stats, the README
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  scripts/setup
  cargo build --release -q --bins --example ceiling --example serve_ceiling --example commit_floor
fi
BIN=$BIN_DIR/p13n-edge

work=$(mktemp -d /tmp/p13n-edge-load.XXXXXX)
pids=()
# A server is signalled with its process group (an nginx master with its workers) where it leads
# one (`set -m` below), alone otherwise; one that has died already is passed over.
signal() { kill "-$1" -- "-$2" 2>/dev/null || kill "-$1" "$2" 2>/dev/null || true; }
cleanup() { for p in "${pids[@]}"; do signal CONT "$p"; signal TERM "$p"; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
started=$SECONDS
section_start=$SECONDS
took() { echo "section $1 took $((SECONDS - section_start)) s" >&2; section_start=$SECONDS; }

# Free ports on 127.0.0.1, all distinct: each socket stays bound until all are picked.
ports() { python3 -c 'import socket,sys; s=[socket.socket() for _ in range(int(sys.argv[1]))]; [x.bind(("127.0.0.1",0)) for x in s]; print(*[x.getsockname()[1] for x in s])' "$1"; }
read -r UP NGX HAP PASS PASS_ADMIN FAST FAST_ADMIN FSYNC FSYNC_ADMIN CEIL SCEIL \
  EMU EMUP EMUP_ADMIN FAR FARPASS FARPASS_ADMIN FARFAST FARFAST_ADMIN QEMU QUOTA QUOTA_ADMIN \
  TLSPASS TLSPASS_PLAIN TLSPASS_ADMIN NGX_TLS HAP_TLS FARH2 FARH2_ADMIN <<< "$(ports 29)"
OFFERS='{"offers":{"offer_for_high_loyalty":{"attributes":{"status":"high"},"batch_segments":[{"id":"1588214"}]}}}'
KEY=1/0123456789abcdef0123456789abcdef01234567
TOKEN=1/1/00000000000000000000000000000001
echo "$KEY" > "$work/key"
# One visitor's event, for the tools that post a file (h2load), and the warm-up check.
BODY='{"td_client_id":"42a508e2-d9b1-4baa-9eb2-6c3fb8bd5e16","td_path":"/retail"}'
printf '%s' "$BODY" > "$work/body.json"
# A throwaway certificate for the TLS listeners (h2load does not verify it).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
  -keyout "$work/edge.key" -out "$work/edge.pem" 2>/dev/null
cat "$work/edge.pem" "$work/edge.key" > "$work/edge-haproxy.pem"  # HAProxy wants both in one

# The static upstream, and nginx doing p13n-edge's job (keepalive upstream, credentials injected,
# client credentials and cookies dropped): two nginx instances with one worker each, so that the
# nginx proxy, like p13n-edge, talks to an upstream in another process.
. benches/load/nginx.sh
nginx_conf upstream <<NGX
  server {
    listen 127.0.0.1:$UP;
    location / { default_type application/json; return 200 '$OFFERS'; }
  }
NGX
nginx_proxy() { # the listen directive's arguments: nginx doing p13n-edge's job behind them
  cat <<NGX
  upstream p13n { server 127.0.0.1:$UP; keepalive 64; }
  server {
    listen $1;
    $2
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
nginx_proxy "127.0.0.1:$NGX" "" | nginx_conf nginx
# The same behind TLS and HTTP/2: `http2 on;` from nginx 1.25.1, `listen ... http2` before. nginx
# ends a client connection after keepalive_requests (1000) requests, with a GOAWAY on HTTP/2;
# h2load does not reconnect, so the connection would be lost for the rest of the run.
ngx_version=$("$NGINX" -v 2>&1 | sed 's|.*nginx/||')
tls_directives="ssl_certificate $work/edge.pem; ssl_certificate_key $work/edge.key; keepalive_requests 100000000;"
if [ "$(printf '%s\n1.25.1\n' "$ngx_version" | sort -V | head -1)" = 1.25.1 ]; then
  nginx_proxy "127.0.0.1:$NGX_TLS ssl" "http2 on; $tls_directives" | nginx_conf nginxtls
else
  nginx_proxy "127.0.0.1:$NGX_TLS ssl http2" "$tls_directives" | nginx_conf nginxtls
fi
# Each server in a process group of its own (job control on while they start): `only_running`
# stops the ones a section does not use, and where the script's own group is orphaned (started
# from a shell that has since exited), the kernel sends SIGHUP and SIGCONT to a group of it
# that holds a stopped process.
set -m
"$NGINX" -c "$work/upstream.conf" -g 'daemon off;' & pids+=($!); UP_MASTER=$!
"$NGINX" -c "$work/nginx.conf" -g 'daemon off;' & pids+=($!); NGX_MASTER=$!
"$NGINX" -c "$work/nginxtls.conf" -g 'daemon off;' & pids+=($!); NGX_TLS_MASTER=$!

# HAProxy doing nginx's job: one thread, a keepalive pool to the same upstream (any idle
# connection reused), the credentials set, cookies dropped, only POST /demo_db/pageviews routed
# (404 otherwise), no logging. Its own process (-db: in the foreground, no master).
haproxy_conf() { # name bind-arguments
  cat > "$work/$1.cfg" <<HAP
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  timeout http-keep-alive 30s
frontend edge
  bind $2
  http-request return status 404 unless { method POST } { path /demo_db/pageviews }
  default_backend p13n
backend p13n
  http-reuse always
  http-request set-header Host 127.0.0.1:$UP
  http-request set-header Authorization "TD1 $KEY"
  http-request set-header WP13n-Token "$TOKEN"
  http-request set-header Content-Type application/vnd.treasuredata.v1+json
  http-request del-header Cookie
  server upstream 127.0.0.1:$UP
HAP
}
haproxy_conf haproxy "127.0.0.1:$HAP"
haproxy_conf haproxytls "127.0.0.1:$HAP_TLS ssl crt $work/edge-haproxy.pem alpn h2,http/1.1"
"$HAPROXY" -db -f "$work/haproxy.cfg" 2>"$work/haproxy.log" & pids+=($!); HAP_PID=$!
"$HAPROXY" -db -f "$work/haproxytls.cfg" 2>"$work/haproxytls.log" & pids+=($!); HAP_TLS_PID=$!

proxy_config() { # name port admin upstream mode [spool sync interval ms] [[service] keys] [more TOML]
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
${7:-}
[service.tokens]
web = "$TOKEN"
[service.cache]
mode = "$5"
[[service.route]]
database = "demo_db"
table = "pageviews"
token = "web"
${8:-}
TOML
}
proxy_config pass "$PASS" "$PASS_ADMIN" "$UP" pass-through
proxy_config fast "$FAST" "$FAST_ADMIN" "$UP" fast
proxy_config fastsync "$FSYNC" "$FSYNC_ADMIN" "$UP" fast 100
proxy_config emu "$EMUP" "$EMUP_ADMIN" "$EMU" pass-through
# In front of an emulator that takes 50 ms to answer, as a distant region would.
proxy_config farpass "$FARPASS" "$FARPASS_ADMIN" "$FAR" pass-through
proxy_config farfast "$FARFAST" "$FARFAST_ADMIN" "$FAR" fast
# The same over HTTP/2 to the emulator (h2c, prior knowledge).
proxy_config farh2 "$FARH2" "$FARH2_ADMIN" "$FAR" fast 0 "" "[upstream]
protocol = \"h2\""
# The same at a quota of 500 calls a second, in front of an emulator of its own (clean stats).
proxy_config quota "$QUOTA" "$QUOTA_ADMIN" "$QEMU" fast 0 "max_events_per_second = 500"
# Pass-through with the browser-facing TLS listener (HTTP/2 offered by ALPN).
proxy_config tlspass "$TLSPASS_PLAIN" "$TLSPASS_ADMIN" "$UP" pass-through 0 "" "[server.tls]
listen = \"127.0.0.1:$TLSPASS\"
cert_file = \"edge.pem\"
key_file = \"edge.key\"
h2 = true"
RUST_LOG=warn $BIN run --config "$work/pass.toml" 2>"$work/pass.log" & pids+=($!); PASS_PID=$!
RUST_LOG=warn $BIN run --config "$work/fast.toml" 2>"$work/fast.log" & pids+=($!); FAST_PID=$!
RUST_LOG=warn $BIN run --config "$work/fastsync.toml" 2>"$work/fastsync.log" & pids+=($!); FSYNC_PID=$!
RUST_LOG=warn $BIN_DIR/examples/ceiling "127.0.0.1:$CEIL" 2>"$work/ceiling.log" & pids+=($!); CEIL_PID=$!
RUST_LOG=warn $BIN_DIR/examples/serve_ceiling "127.0.0.1:$SCEIL" 2>"$work/serve_ceiling.log" & pids+=($!); SCEIL_PID=$!
RUST_LOG=warn $BIN emulator --listen "127.0.0.1:$EMU" --rules conf/demo-rules.toml --threads 1 2>"$work/emu.log" & pids+=($!); EMU_PID=$!
RUST_LOG=warn $BIN run --config "$work/emu.toml" 2>"$work/emup.log" & pids+=($!); EMUP_PID=$!
RUST_LOG=warn $BIN emulator --listen "127.0.0.1:$FAR" --rules conf/demo-rules.toml --threads 1 2>"$work/far.log" & pids+=($!); FAR_PID=$!
RUST_LOG=warn $BIN run --config "$work/farpass.toml" 2>"$work/farpass.log" & pids+=($!); FARPASS_PID=$!
RUST_LOG=warn $BIN run --config "$work/farfast.toml" 2>"$work/farfast.log" & pids+=($!); FARFAST_PID=$!
RUST_LOG=warn $BIN run --config "$work/farh2.toml" 2>"$work/farh2.log" & pids+=($!); FARH2_PID=$!
RUST_LOG=warn $BIN emulator --listen "127.0.0.1:$QEMU" --rules conf/demo-rules.toml --threads 1 2>"$work/qemu.log" & pids+=($!); QEMU_PID=$!
RUST_LOG=warn $BIN run --config "$work/quota.toml" 2>"$work/quota.log" & pids+=($!); QUOTA_PID=$!
RUST_LOG=warn $BIN run --config "$work/tlspass.toml" 2>"$work/tlspass.log" & pids+=($!); TLSPASS_PID=$!
set +m
for p in $UP $NGX $HAP $PASS $FAST $FSYNC $CEIL $SCEIL $EMU $EMUP $FAR $FARPASS $FARFAST $QEMU $QUOTA \
  $TLSPASS $NGX_TLS $HAP_TLS $FARH2; do
  for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.1; done
  (echo > /dev/tcp/127.0.0.1/$p) 2>/dev/null || { echo "nothing listens on port $p; logs in $work:"; tail -n 5 "$work"/*.log; exit 1; }
done
UP_WORKER=$(pgrep -P "$UP_MASTER"); NGX_WORKER=$(pgrep -P "$NGX_MASTER"); NGX_TLS_WORKER=$(pgrep -P "$NGX_TLS_MASTER")
# Both emulators of the distant upstream answer after 50 ms (latency only, until cleared).
FAULT='{"status":0,"latency_ms":50}'
for e in $FAR $QEMU; do curl -sf -X POST -d "$FAULT" "http://127.0.0.1:$e/_emulator/faults" >/dev/null; done

# The process under test for each target and its upstream, for CPU time per request; and the
# admin listener of the targets whose hits go through the spool.
declare -A SERVER=([direct]=$UP_WORKER [nginx]=$NGX_WORKER [haproxy]=$HAP_PID [pass]=$PASS_PID
  [fast]=$FAST_PID [fastsync]=$FSYNC_PID [ceiling]=$CEIL_PID [serve-ceiling]=$SCEIL_PID
  [emulator]=$EMUP_PID)
declare -A UPSTREAM=([direct]="" [nginx]=$UP_WORKER [haproxy]=$UP_WORKER [pass]=$UP_WORKER
  [fast]=$UP_WORKER [fastsync]=$UP_WORKER [ceiling]="" [serve-ceiling]="" [emulator]=$EMU_PID)
declare -A SPOOL_ADMIN=([fast]=$FAST_ADMIN [fastsync]=$FSYNC_ADMIN)
# Only the servers a section uses run during it; the others are stopped (SIGSTOP), so that their
# idle timers (each pingora process wakes about 100 times a second) do not take turns on the
# two cores. The static upstream (its master and worker) runs throughout: most sections use it.
ALWAYS="$UP_MASTER"
only_running() { # pid...: every other server (its process group) stopped, these running
  local keep=" $ALWAYS $* " p
  for p in "${pids[@]}"; do
    if [[ "$keep" == *" $p "* ]]; then signal CONT "$p"; else signal STOP "$p"; fi
  done
}
# The machine's CPU time the hypervisor gave to others while ours wanted it (steal), and all of
# its CPU time, in ticks over every CPU (/proc/stat's first line).
steal_ticks() { awk '$1 == "cpu" {print $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat; }
stolen_pct() { # "steal total" before, the same after: the share stolen between, in %
  awk -v a="$1" -v b="$2" 'BEGIN {split(a, x, " "); split(b, y, " "); t = y[2] - x[2]; printf "%.1f", (t > 0) ? (y[1] - x[1]) * 100 / t : 0}'
}
cpu_ticks() { [ -n "$1" ] && awk '{print $14 + $15}' "/proc/$1/stat" || echo 0; }
# A p13n-edge process's CPU ticks in three parts: its answering threads (named after the
# service, `p13n-edge`, as the process's main thread is, which is not one of them), the spool's
# writer (`p13n-edge spool`) and replay (its background service's runtime, `BG p13n-edge spool
# replay`, and that runtime's blocking threads: the kernel keeps 15 bytes of a name). The rest is
# the process's time less these (`cpu_ticks`, which keeps the threads that ended).
part_ticks() {
  local t name
  for t in /proc/"$1"/task/*; do
    [ "${t##*/}" = "$1" ] && continue
    name=$(cat "$t/comm" 2>/dev/null) || continue
    sed 's/.*) //' "$t/stat" 2>/dev/null | awk -v n="$name" '{
      part = (n == "p13n-edge") ? "answers" : (n == "p13n-edge spool") ? "writer" : (n ~ /^BG p13n-edge sp/) ? "replay" : "other"
      print part, $12 + $13 }'
  done | awk '{t[$1] += $2} END {print t["answers"] + 0, t["writer"] + 0, t["replay"] + 0}'
}
per_req_us() { # ticks before, after, requests: CPU µs per request
  awk -v a="$1" -v b="$2" -v n="$3" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", (n > 0) ? (b - a) / hz * 1e6 / n : 0}'
}
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m {print $2}'; }
spool_depth() { metric "$1" p13n_edge_spool_depth; }
# A counter's total over all its labels.
counter() { curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" 'index($1, m "{") == 1 || $1 == m {n += $2} END {printf "%.17g\n", n}'; }
# Cache lookups that were not hits (misses, stale answers), over all labels.
not_hits() { curl -s "http://127.0.0.1:$1/metrics" | awk '/^p13n_edge_cache_lookups_total/ && !/result="hit"/ {n += $2} END {print n + 0}'; }
# Wait until the spool is empty (every accepted event delivered); prints the seconds it took.
drain() {
  local start=$(date +%s.%N)
  for _ in $(seq 3000); do [ "$(spool_depth "$1")" = 0 ] && break; sleep 0.1; done
  [ "$(spool_depth "$1")" = 0 ] || { echo "the spool did not drain" >&2; exit 1; }
  awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f", b - a}'
}
emu_stat() { # port key...: the emulator's stats, space-separated
  curl -s "http://127.0.0.1:$1/_emulator/stats" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(*[d[k] for k in sys.argv[1:]])' "${@:2}"
}
# Events at the upstream, once each: a repeated uuid (event_uuid is on) counts once.
unique_events() { emu_stat "$1" events_ingested duplicates | awk '{print $1 - $2}'; }
# From wrk's output: requests answered, non-2xx (or 3xx) answers, socket errors, and latencies.
wrk_n() { awk '/requests in/ {print $1}'; }
wrk_non2xx() { awk '/Non-2xx/ {n = $NF} END {print n + 0}'; }
wrk_errors() { awk '/Socket errors/ {gsub(",", ""); n = $4 + $6 + $8 + $10} END {print n + 0}'; }
to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; printf "%.3f", v}'; }
wrk_pct() { awk -v p="$1" '$1==p {print $2}' | to_ms; }
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# A value from a line of key=value pairs on stdin (examples/commit_floor.rs prints one).
kv() { tr ' ' '\n' | awk -F= -v k="$1" '$1 == k {print $2}'; }
total() { tr ' ' '\n' | awk '{s += $1} END {print s + 0}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }
added() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a - b}'; }
# Lost events fail the run: an upstream must count at least every event answered 2xx, once each
# (it can count more: requests still in flight when wrk stopped).
check_events() { # what, 2xx answers, events at the upstream
  [ "$2" -le "$3" ] || { echo "$1: $2 answers 2xx but only $3 events at the upstream: events lost" >&2; exit 1; }
}
# Warm a fast proxy: each of the 1024 visitors once (benches/load/once.lua); the seconds bound
# wrk's run, the connections its rate (each miss waits for the upstream).
warm_once() { # port seconds connections
  wrk -t1 -c"$3" -d"$2s" -s benches/load/once.lua "http://127.0.0.1:$1/demo_db/pageviews" >/dev/null
}
# Each section's table goes to a file of its own; they are put together at the end.
out() { cat >> "$work/results-$1.md"; }

declare -A TARGET=(
  [direct]="http://127.0.0.1:$UP/demo_db/pageviews"
  [nginx]="http://127.0.0.1:$NGX/demo_db/pageviews"
  [haproxy]="http://127.0.0.1:$HAP/demo_db/pageviews"
  [pass]="http://127.0.0.1:$PASS/demo_db/pageviews"
  [fast]="http://127.0.0.1:$FAST/demo_db/pageviews"
  [fastsync]="http://127.0.0.1:$FSYNC/demo_db/pageviews"
  [ceiling]="http://127.0.0.1:$CEIL/demo_db/pageviews"
  [serve-ceiling]="http://127.0.0.1:$SCEIL/demo_db/pageviews"
  [emulator]="http://127.0.0.1:$EMUP/demo_db/pageviews"
)
ORDER=(direct nginx haproxy pass fast fastsync ceiling serve-ceiling emulator)
declare -A RPS SUST P50 P99 CPU UCPU M S PARTS STOLEN
# The targets whose CPU is also split by thread (part_ticks).
SPLIT=(pass fast fastsync)
if has main || has half; then
  only_running $NGX_MASTER $HAP_PID $PASS_PID $FAST_PID $FSYNC_PID $CEIL_PID $SCEIL_PID $EMU_PID $EMUP_PID
  for t in "${ORDER[@]}"; do  # warm up, and check each answers 200
    code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
      -d "$BODY" "${TARGET[$t]}")
    [ "$code" = 200 ] || { echo "$t answered $code"; exit 1; }
    wrk -t1 -c$CONNS -d1s -s benches/load/post.lua "${TARGET[$t]}" >/dev/null
  done
  # HAProxy routes only what nginx and p13n-edge route.
  for probe in "-X GET http://127.0.0.1:$HAP/demo_db/pageviews" "-X POST http://127.0.0.1:$HAP/other_db/pageviews"; do
    # shellcheck disable=SC2086
    code=$(curl -s -o /dev/null -w '%{http_code}' $probe)
    [ "$code" = 404 ] || { echo "haproxy answered $code to $probe"; exit 1; }
  done
  for t in fast fastsync; do drain "${SPOOL_ADMIN[$t]}" >/dev/null; done
fi

if has main; then
  for round in $(seq "$ROUNDS"); do
    for t in "${ORDER[@]}"; do
      split=false; [[ " ${SPLIT[*]} " == *" $t "* ]] && split=true
      # Run again while the host takes more than STEAL_LIMIT% of the CPU (see TRIES).
      for try in $(seq "$TRIES"); do
        $split && read -ra p0 <<< "$(part_ticks "${SERVER[$t]}")"
        s0=$(cpu_ticks "${SERVER[$t]}"); u0=$(cpu_ticks "${UPSTREAM[$t]}"); st0=$(steal_ticks)
        out=$(wrk -t1 -c$CONNS -d"${SECS}s" --latency -s benches/load/post.lua "${TARGET[$t]}")
        stolen=$(stolen_pct "$st0" "$(steal_ticks)")
        if echo "$out" | grep -q "Non-2xx"; then echo "$t: non-2xx answers"; echo "$out"; exit 1; fi
        waited=0
        [ -n "${SPOOL_ADMIN[$t]:-}" ] && waited=$(drain "${SPOOL_ADMIN[$t]}")
        s1=$(cpu_ticks "${SERVER[$t]}"); u1=$(cpu_ticks "${UPSTREAM[$t]}")
        $split && read -ra p1 <<< "$(part_ticks "${SERVER[$t]}")"
        again "$try" "$stolen" "round $round $t: $(echo "$out" | awk '/Requests\/sec/ {print $2}') req/s" || break
      done
      STOLEN[$t]+="$stolen "
      n=$(echo "$out" | wrk_n)
      if $split; then
        for i in 0 1 2; do PARTS[$t,$i]+="$(per_req_us "${p0[$i]}" "${p1[$i]}" "$n") "; done
        PARTS[$t,3]+="$(per_req_us $((p1[0] + p1[1] + p1[2] + s0)) $((p0[0] + p0[1] + p0[2] + s1)) "$n") "
      fi
      took=$(echo "$out" | awk '/requests in/ {print $4}' | tr -d , | to_ms)
      rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
      RPS[$t]+="$rps "
      SUST[$t]+="$(awk -v n="$n" -v ms="$took" -v w="$waited" 'BEGIN {printf "%.2f", n / (ms / 1000 + w)}') "
      P50[$t]+="$(echo "$out" | wrk_pct 50%) "
      P99[$t]+="$(echo "$out" | wrk_pct 99%) "
      CPU[$t]+="$(per_req_us "$s0" "$s1" "$n") "
      UCPU[$t]+="$(per_req_us "$u0" "$u1" "$n") "
      echo "round $round $t: $rps req/s (spool drained in ${waited}s, ${stolen}% of the machine's CPU stolen)" >&2
    done
  done
  declare -A C
  for t in "${ORDER[@]}"; do
    M[$t]=$(echo "${RPS[$t]}" | median); S[$t]=$(echo "${SUST[$t]}" | median); C[$t]=$(echo "${CPU[$t]}" | median)
  done
  {
    echo "Side by side: wrk 1 thread, $CONNS connections, ${SECS}s x $ROUNDS rounds, alternating targets; medians."
    echo "Every server has one worker (HAProxy one thread), and the upstream (nginx returning a"
    echo "fixed offers JSON) is a process of its own. \`haproxy\` does nginx's job (keepalive pool with"
    echo "\`http-reuse always\`, credentials set, cookies dropped). \`fast\` answers cache hits (its spool"
    echo "fdatasyncs each group commit before answering), \`fastsync\` the same with"
    echo "\`spool.sync_interval_ms = 100\`; after their runs the spool drains before the next run, and"
    echo "*sustained* counts that time: hits answered and their events delivered. \`ceiling\` is a bare"
    echo "pingora proxy answering from memory (examples/ceiling.rs), \`serve-ceiling\` the same on"
    echo "pingora-core's HttpServerApp without pingora-proxy (examples/serve_ceiling.rs); \`emulator\` is"
    echo "p13n-edge in front of its own emulator. CPU is the user + system time per request of the"
    echo "server under test and of its upstream, over the run and the drain. *CPU stolen* is the share"
    echo "of the machine's CPU time that the hypervisor gave to other guests during each round's run"
    echo "(steal, /proc/stat), round by round: the host's load, which moves req/s here. A run with more"
    echo "than ${STEAL_LIMIT}% stolen was run again, up to $TRIES times in all (the last kept); runs repeated: $REPEATED."
    echo
    echo "| target | req/s | sustained req/s | p50 ms | p99 ms | server CPU µs/req | upstream CPU µs/req | CPU stolen, each round |"
    echo "|---|---|---|---|---|---|---|---|"
    for t in "${ORDER[@]}"; do
      echo "| $t | ${M[$t]} | ${S[$t]} | $(echo "${P50[$t]}" | median) | $(echo "${P99[$t]}" | median) | ${C[$t]} | $(echo "${UCPU[$t]}" | median) | $(echo ${STOLEN[$t]} | sed 's/\([0-9.]*\)/\1%/g; s/ /, /g') |"
    done
    echo
    echo "| ratio | value |"
    echo "|---|---|"
    echo "| p13n-edge pass-through / nginx | $(ratio "${M[pass]}" "${M[nginx]}") |"
    echo "| p13n-edge pass-through / HAProxy | $(ratio "${M[pass]}" "${M[haproxy]}") |"
    echo "| HAProxy / nginx | $(ratio "${M[haproxy]}" "${M[nginx]}") |"
    echo "| p13n-edge pass-through / direct | $(ratio "${M[pass]}" "${M[direct]}") |"
    echo "| nginx / direct | $(ratio "${M[nginx]}" "${M[direct]}") |"
    echo "| p13n-edge fast (hit) / pass-through | $(ratio "${M[fast]}" "${M[pass]}") |"
    echo "| p13n-edge fast (hit) / nginx | $(ratio "${M[fast]}" "${M[nginx]}") |"
    echo "| p13n-edge fast (hit) / ceiling | $(ratio "${M[fast]}" "${M[ceiling]}") |"
    echo "| p13n-edge fast, sustained / nginx | $(ratio "${S[fast]}" "${M[nginx]}") |"
    echo "| p13n-edge fast, sync 100 ms / nginx | $(ratio "${M[fastsync]}" "${M[nginx]}") |"
    echo "| p13n-edge fast, sync 100 ms / ceiling | $(ratio "${M[fastsync]}" "${M[ceiling]}") |"
    echo "| p13n-edge fast, sync 100 ms, sustained / nginx | $(ratio "${S[fastsync]}" "${M[nginx]}") |"
    echo "| serve-ceiling / ceiling | $(ratio "${M[serve-ceiling]}" "${M[ceiling]}") |"
    echo "| serve-ceiling / ceiling, CPU µs/req | $(ratio "${C[serve-ceiling]}" "${C[ceiling]}") |"
    echo
    echo "Where p13n-edge's CPU a request goes, by thread, over the same runs (medians, µs): the"
    echo "answering thread; the spool's writer (its write and \`fdatasync\` of each group commit);"
    echo "replay (reading the spool, the upstream call that pass-through makes on the answering"
    echo "thread, refreshing the cache); the rest (the process's time less these: admin, reload,"
    echo "timers, threads that ended). Interrupt work may be charged to whichever thread it"
    echo "interrupted, or to none (where the kernel accounts it apart)."
    echo
    echo "| target | answering thread | spool writer | replay | other |"
    echo "|---|---|---|---|---|"
    for t in "${SPLIT[@]}"; do
      echo "| $t | $(echo "${PARTS[$t,0]}" | median) | $(echo "${PARTS[$t,1]}" | median) | $(echo "${PARTS[$t,2]}" | median) | $(echo "${PARTS[$t,3]}" | median) |"
    done
    echo
  } | out main
  took main
fi

# p99 at half of the pass-through peak: the same offered rate for direct, nginx and pass-through.
if has half; then
  only_running $NGX_MASTER $PASS_PID
  if [ -z "${M[pass]:-}" ]; then  # without the main section, measure the peak here
    M[pass]=$(wrk -t1 -c$CONNS -d"${SECS}s" -s benches/load/post.lua "${TARGET[pass]}" | awk '/Requests\/sec/ {print $2}')
  fi
  HALF=$(awk -v r="${M[pass]}" 'BEGIN {printf "%d", r / 2}')
  PACED_CONNS=$(awk -v r="$HALF" 'BEGIN {c = int(r * 0.010 + 0.5); print (c < 1 ? 1 : c)}')
  declare -A HRPS HP99 H HSTOLEN
  repeated0=$REPEATED
  for round in $(seq "$ROUNDS"); do
    for t in direct nginx pass; do
      # Run again while the host takes more than STEAL_LIMIT% of the CPU (see TRIES).
      for try in $(seq "$TRIES"); do
        st0=$(steal_ticks)
        out=$(wrk -t1 -c"$PACED_CONNS" -d"${SECS}s" --latency -s benches/load/paced.lua "${TARGET[$t]}")
        stolen=$(stolen_pct "$st0" "$(steal_ticks)")
        again "$try" "$stolen" "round $round half $t: p99 $(echo "$out" | wrk_pct 99%) ms" || break
      done
      HRPS[$t]+="$(echo "$out" | awk '/Requests\/sec/ {print $2}') "
      HP99[$t]+="$(echo "$out" | wrk_pct 99%) "
      HSTOLEN[$t]+="${HSTOLEN[$t]:+, }$stolen%"
    done
  done
  for t in direct nginx pass; do H[$t]=$(echo "${HP99[$t]}" | median); done
  {
    echo "p99 at half of the pass-through peak: $PACED_CONNS connections each waiting 10 ms between"
    echo "requests (wrk), the same for each target; medians of $ROUNDS runs. A run with more than"
    echo "${STEAL_LIMIT}% of the machine's CPU stolen was run again, up to $TRIES times in all (the last kept);"
    echo "runs repeated: $((REPEATED - repeated0))."
    echo
    echo "| target | req/s | p99 ms | added p99 over direct | CPU stolen, each round |"
    echo "|---|---|---|---|---|"
    for t in direct nginx pass; do
      echo "| $t | $(echo "${HRPS[$t]}" | median) | ${H[$t]} | $(added "${H[$t]}" "${H[direct]}") ms | ${HSTOLEN[$t]} |"
    done
    echo
  } | out half
  took half
fi

# A distant upstream (the emulator answering after 50 ms): pass-through and fast at the same
# offered rate, paced connections sized for it, and every event counted at the upstream.
if has far; then
  only_running $FAR_PID $FARPASS_PID $FARFAST_PID
  FAR_RATE=500
  # Warm up: every visitor of post.lua cached, connections open. One second: `fast` answers hits
  # far faster than replay can deliver them 50 ms away (about 640 a second), and the spool must
  # drain before the runs.
  for t in farpass farfast; do
    port_var=${t^^}; wrk -t1 -c64 -d1s -s benches/load/post.lua "http://127.0.0.1:${!port_var}/demo_db/pageviews" >/dev/null
  done
  drain "$FARFAST_ADMIN" >/dev/null
  declare -A FRPS FP50 FP99 FANSWERED FINGESTED FDRAIN FROUNDS
  repeated0=$REPEATED
  for round in $(seq "$ROUNDS"); do
    for t in farpass farfast; do
      port_var=${t^^}
      # Each connection waits 10 ms between requests: 60 ms a cycle through the upstream, about
      # 10 from the cache.
      cycle=$([ "$t" = farpass ] && echo 0.060 || echo 0.0105)
      conns=$(awk -v r="$FAR_RATE" -v c="$cycle" 'BEGIN {printf "%d", r * c + 0.5}')
      admin_var=${t^^}_ADMIN
      # Run again while the host takes more than STEAL_LIMIT% of the CPU (see TRIES).
      for try in $(seq "$TRIES"); do
        miss0=$(not_hits "${!admin_var}")
        before=$(unique_events "$FAR"); st0=$(steal_ticks)
        out=$(wrk -t1 -c"$conns" -d"${SECS}s" --latency -s benches/load/paced.lua "http://127.0.0.1:${!port_var}/demo_db/pageviews")
        stolen=$(stolen_pct "$st0" "$(steal_ticks)")
        if echo "$out" | grep -q "Non-2xx"; then echo "$t: non-2xx answers"; echo "$out"; exit 1; fi
        waited=0
        [ "$t" = farfast ] && waited=$(drain "$FARFAST_ADMIN")
        n=$(echo "$out" | wrk_n); events=$(( $(unique_events "$FAR") - before ))
        check_events "$t" "$n" "$events"
        again "$try" "$stolen" "round $round $t: p99 $(echo "$out" | wrk_pct 99%) ms" || break
      done
      FROUNDS[$t]+="${FROUNDS[$t]:+, }$(echo "$out" | wrk_pct 99%) ($stolen%)"
      FRPS[$t]+="$(echo "$out" | awk '/Requests\/sec/ {print $2}') "
      FP50[$t]+="$(echo "$out" | wrk_pct 50%) "
      FP99[$t]+="$(echo "$out" | wrk_pct 99%) "
      FANSWERED[$t]+="$n "
      FINGESTED[$t]+="$events "
      FDRAIN[$t]+="$waited "
      echo "round $round $t: $(echo "$out" | awk '/Requests\/sec/ {print $2}') req/s, p99 $(echo "$out" | wrk_pct 99%) ms, $(( $(not_hits "${!admin_var}") - miss0 )) not cache hits, drained in ${waited}s, $stolen% of the machine's CPU stolen" >&2
    done
  done
  {
    echo "With a distant upstream: the emulator answering after 50 ms, about $FAR_RATE requests/s offered"
    echo "to each (paced connections, 1024 visitors); medians of $ROUNDS runs. Answers and events are"
    echo "totals over the runs kept; the upstream counts its events, once each, once the spool has"
    echo "drained (it can count a few more: requests still in flight when wrk stopped). A run with more"
    echo "than ${STEAL_LIMIT}% of the machine's CPU stolen was run again, up to $TRIES times in all, the last"
    echo "kept (each try's events checked for loss); runs repeated: $((REPEATED - repeated0))."
    echo
    echo "| target | req/s | p50 ms | p99 ms | spool drained after | 2xx answers | events at the upstream | each round: p99 ms (CPU stolen) |"
    echo "|---|---|---|---|---|---|---|---|"
    for t in farpass farfast; do
      echo "| ${t#far} | $(echo "${FRPS[$t]}" | median) | $(echo "${FP50[$t]}" | median) | $(echo "${FP99[$t]}" | median) | $(echo "${FDRAIN[$t]}" | median) s | $(echo "${FANSWERED[$t]}" | total) | $(echo "${FINGESTED[$t]}" | total) | ${FROUNDS[$t]} |"
    done
    echo
  } | out far
  took far
fi

# One paced run against a fast proxy in front of a 50 ms emulator: the answers by status, the
# spool when the load ended, the time it took to drain, the events the upstream counted, and its
# peaks (the most calls in one second, the most at once), the proxy's CPU time per answer over
# the run and the drain, and the calls its quota deferred. Sets RUN_* for the caller.
far_run() { # proxy port, admin port, emulator port, offered events/s, seconds, proxy pid
  # Each connection waits 10 ms between requests: about 11 ms a cycle with a hit.
  local conns out before
  conns=$(awk -v r="$4" 'BEGIN {c = int(r * 0.011 + 0.5); print (c < 1 ? 1 : c)}')
  # Setting the fault plan again restarts the emulator's peaks (max_per_second, max_in_flight).
  curl -sf -X POST -d "$FAULT" "http://127.0.0.1:$3/_emulator/faults" >/dev/null
  local dup0 miss0; read -r before dup0 <<< "$(emu_stat "$3" events_ingested duplicates)"
  miss0=$(not_hits "$2"); local deferred0 cpu0; deferred0=$(counter "$2" p13n_edge_quota_deferred_total)
  cpu0=$(cpu_ticks "$6")
  local commits0 commit_s0; commits0=$(counter "$2" p13n_edge_spool_commit_seconds_count)
  commit_s0=$(counter "$2" p13n_edge_spool_commit_seconds_sum)
  local quick0; quick0=$(counter "$2" 'p13n_edge_spool_commit_seconds_bucket{le="0.001"}')
  local st0; st0=$(steal_ticks)
  out=$(wrk -t1 -c"$conns" -d"$5s" --latency -s benches/load/paced_status.lua "http://127.0.0.1:$1/demo_db/pageviews")
  RUN_STOLEN=$(stolen_pct "$st0" "$(steal_ticks)")
  RUN_DEPTH=$(spool_depth "$2")
  # The spool's group commits during the run: how many, their mean time (write + fdatasync),
  RUN_COMMITS=$(( $(counter "$2" p13n_edge_spool_commit_seconds_count) - commits0 ))
  # and the share of them that took over 1 ms (the histogram's bucket bound).
  local quick; quick=$(( $(counter "$2" 'p13n_edge_spool_commit_seconds_bucket{le="0.001"}') - quick0 ))
  RUN_SLOW_COMMITS=$(awk -v q="$quick" -v n="$RUN_COMMITS" 'BEGIN {printf "%.1f", (n > 0) ? (n - q) * 100 / n : 0}')
  RUN_COMMIT_US=$(awk -v a="$commit_s0" -v b="$(counter "$2" p13n_edge_spool_commit_seconds_sum)" -v n="$RUN_COMMITS" 'BEGIN {printf "%.0f", (n > 0) ? (b - a) / n * 1e6 : 0}')
  RUN_NOT_HITS=$(( $(not_hits "$2") - miss0 ))
  RUN_DRAIN=$(drain "$2")
  RUN_DEFERRED=$(( $(counter "$2" p13n_edge_quota_deferred_total) - deferred0 ))
  local cpu1; cpu1=$(cpu_ticks "$6")
  local after dup1
  read -r after dup1 RUN_PEAK RUN_IN_FLIGHT <<< "$(emu_stat "$3" events_ingested duplicates max_per_second max_in_flight)"
  RUN_DUPS=$((dup1 - dup0)); RUN_EVENTS=$((after - before - RUN_DUPS))
  RUN_CONNS=$conns
  RUN_RPS=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  RUN_P50=$(echo "$out" | wrk_pct 50%); RUN_P99=$(echo "$out" | wrk_pct 99%)
  RUN_2XX=$(echo "$out" | awk '/^status 2[0-9][0-9]:/ {n += $3} END {print n + 0}')
  RUN_OTHER=$(echo "$out" | awk '/^status [013-9][0-9][0-9]:/ {n += $3} END {print n + 0}')
  RUN_STATUSES=$(echo "$out" | awk '/^status / {sub(":", ""); printf "%s%s: %s", sep, $2, $3; sep = ", "}')
  RUN_ERRORS=$(echo "$out" | wrk_errors)
  RUN_CPU=$(per_req_us "$cpu0" "$cpu1" "$((RUN_2XX + RUN_OTHER))")
}

# far_run after a warm-up (every visitor cached, the spool drained), run again while the host
# takes more than STEAL_LIMIT% of the CPU, up to TRIES times in all, the last kept; every try's
# events are checked. The first argument names the run, the others are far_run's.
steady_far_run() {
  local what=$1 try; shift
  for try in $(seq "$TRIES"); do
    warm_once "$1" 2 64; drain "$2" >/dev/null
    far_run "$@"
    check_events "$what" "$RUN_2XX" "$RUN_EVENTS"
    again "$try" "$RUN_STOLEN" "$what: p99 $RUN_P99 ms" || return 0
  done
}

# The issue's rates in front of the distant upstream, default settings (farfast as it is):
# 2,000 and 5,000 events/s offered for RATE_SECONDS each, with each of two arrival patterns
# (benches/load/paced.lua): `poisson`, each connection waiting a random time between requests,
# which keeps the connections out of step, and `fixed`, every connection waiting exactly 10 ms,
# which falls in step with the group commits. Targets: the spool drains within 3 s of the load ending, every 2xx answer's event
# counted at the upstream, p99 < 5 ms.
if has rates; then
  only_running $FAR_PID $FARFAST_PID
  repeated0=$REPEATED
  declare -A RRPS RP50 RP99 R2XX ROTHER RERR RDEPTH RDRAIN REVENTS RCONNS RPEAK RIN RDUPS RNOTHIT RCPU RFLOOR RDISK RDISKSLOW RCOMMITS RCOMMIT RSLOW RROUNDS
  for round in $(seq "$ROUNDS"); do
    for rate in $RATES; do
      for arrivals in $ARRIVALS; do
        k="$rate $arrivals"; export PACING=$arrivals
        # Every visitor cached and fresh (fast mode's fresh_ms is 60 s), so every answer is a hit.
        steady_far_run "round $round fast at $rate/s, $arrivals arrivals" "$FARFAST" "$FARFAST_ADMIN" "$FAR" "$rate" "$RATE_SECS" "$FARFAST_PID"
        RRPS[$k]+="$RUN_RPS "; RP50[$k]+="$RUN_P50 "; RP99[$k]+="$RUN_P99 "
        R2XX[$k]+="$RUN_2XX "; ROTHER[$k]+="$RUN_OTHER "; RERR[$k]+="$RUN_ERRORS "
        RDEPTH[$k]+="$RUN_DEPTH "; RDRAIN[$k]+="$RUN_DRAIN "; REVENTS[$k]+="$RUN_EVENTS "; RDUPS[$k]+="$RUN_DUPS "; RNOTHIT[$k]+="$RUN_NOT_HITS "; RCPU[$k]+="$RUN_CPU "
        RPEAK[$k]+="$RUN_PEAK "; RIN[$k]+="$RUN_IN_FLIGHT "; RCONNS[$k]=$RUN_CONNS
        RCOMMITS[$k]+="$RUN_COMMITS "; RCOMMIT[$k]+="$RUN_COMMIT_US "; RSLOW[$k]+="$RUN_SLOW_COMMITS "
        RROUNDS[$k]+="${RROUNDS[$k]:+, }$RUN_P99 ($RUN_STOLEN%)"
        # The network's floor at the same pace: the same clients against the static nginx
        # upstream directly (no proxy, no disk).
        # Each floor is run again, as the proxy's runs are, while the host takes more than
        # STEAL_LIMIT% of the CPU.
        for try in $(seq "$TRIES"); do
          st0=$(steal_ticks)
          floor=$(wrk -t1 -c"$RUN_CONNS" -d"${RATE_SECS}s" --latency -s benches/load/paced_status.lua "${TARGET[direct]}" | wrk_pct 99%)
          again "$try" "$(stolen_pct "$st0" "$(steal_ticks)")" "round $round direct at $rate/s, $arrivals arrivals: p99 $floor ms" || break
        done
        RFLOOR[$k]+="$floor "
        # The disk's floor at the same pace: the same clients against a bare group commit on
        # the spool's file system (examples/commit_floor.rs: no network, no proxy).
        for try in $(seq "$TRIES"); do
          st0=$(steal_ticks)
          disk=$("$BIN_DIR/examples/commit_floor" "$work" "$RUN_CONNS" "$RATE_SECS" "$arrivals")
          disk_p99=$(kv p99_ms <<< "$disk"); disk_slow=$(kv commits_over_1ms_pct <<< "$disk")
          again "$try" "$(stolen_pct "$st0" "$(steal_ticks)")" "round $round the disk alone at $rate/s, $arrivals arrivals: p99 $disk_p99 ms" || break
        done
        RDISK[$k]+="$disk_p99 "; RDISKSLOW[$k]+="$disk_slow "
        echo "round $round fast at $rate/s, $arrivals arrivals: $RUN_RPS req/s, p99 $RUN_P99 ms (direct at the same pace $floor ms, the disk alone $disk_p99 ms with $disk_slow% of its commits over 1 ms), statuses $RUN_STATUSES, $RUN_NOT_HITS not hits, spool $RUN_DEPTH, drained in ${RUN_DRAIN}s, $RUN_EVENTS events, upstream peaks $RUN_PEAK/s and $RUN_IN_FLIGHT at once, $RUN_COMMITS spool commits of $RUN_COMMIT_US µs on average ($RUN_SLOW_COMMITS% over 1 ms), $RUN_STOLEN% of the machine's CPU stolen" >&2
      done
    done
  done
  unset PACING
  {
    echo "\`fast\` at the issue's rates, default settings (no quota, the default replay window), in front"
    echo "of the emulator answering after 50 ms: ${RATE_SECS}s per run, paced connections, 1024 visitors"
    echo "warmed first so that every answer is a hit; medians of $ROUNDS runs, answers and events totals over the runs kept."
    echo "*Arrivals*: \`poisson\`, each connection waits a random time between requests, exponentially"
    echo "distributed with a mean of 10 ms, which keeps the connections out of step with one another, as"
    echo "independent visitors are; \`fixed\`, each waits exactly 10 ms. Connections answered by the same"
    echo "group commit then send again together, so the connections fall in step with the commits and"
    echo "arrive in bursts, and fewer arrive than offered (req/s). Both are closed loops: a connection"
    echo "sends its next request only after its answer. *Spool at end* is"
    echo "p13n_edge_spool_depth when the load ended, *drain* the time from then to an empty spool; the"
    echo "upstream's peaks are the emulator's max_per_second and max_in_flight over the run and the"
    echo "drain, and the proxy's CPU (user + system) over the run and the drain per answer; events are"
    echo "counted once each (a repeated uuid is shown apart, not counted). *Spool commits* are the group"
    echo "commits during the run, their mean time and the share that took over 1 ms, each one lane's"
    echo "write and its fdatasync (\`p13n_edge_spool_commit_seconds\`): a hit waits for the commit under"
    echo "way, then for its own. *Direct p99* is the p99 of the same connections, the same arrivals,"
    echo "against the static nginx upstream itself, run after each (answered sooner, they send a little"
    echo "more often): the network's floor. *Disk alone* is the p99 of as many clients waiting the same"
    echo "way (their own random draws), each answered once its record is durable, by a bare group commit"
    echo "on the spool's file system (one pwrite and one fdatasync per batch, space set aside as the"
    echo "spool does; no network, no proxy: examples/commit_floor.rs), run after each, and the share of"
    echo "its commits that took over 1 ms (the two medians taken apart): the disk's floor at that"
    echo "moment. *Each round* gives its p99 and, in brackets, the share of the machine's CPU time"
    echo "that the hypervisor gave to other guests while this one's wanted it during the run (steal, from"
    echo "/proc/stat): the host's load, which this machine cannot see otherwise. A run with more than"
    echo "${STEAL_LIMIT}% stolen was run again, up to $TRIES times in all (the last kept), the two floors' runs too;"
    echo "runs repeated: $((REPEATED - repeated0)). The issue's target:"
    echo "drained within 3 s, every 2xx answer's event counted at the upstream, p99 < 5 ms."
    echo
    echo "| offered events/s | arrivals | connections | req/s | p50 ms | p99 ms | direct p99 ms | disk alone: p99 ms, commits over 1 ms | 2xx answers | other answers | socket errors | not cache hits | spool at end | drain | events at the upstream | upstream: most calls in a second, at once | proxy CPU µs/answer | spool commits, mean µs, over 1 ms | each round: p99 ms (CPU stolen) |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    for rate in $RATES; do
      for arrivals in $ARRIVALS; do
        k="$rate $arrivals"
        echo "| $rate | $arrivals | ${RCONNS[$k]} | $(echo "${RRPS[$k]}" | median) | $(echo "${RP50[$k]}" | median) | $(echo "${RP99[$k]}" | median) | $(echo "${RFLOOR[$k]}" | median) | $(echo "${RDISK[$k]}" | median), $(echo "${RDISKSLOW[$k]}" | median)% | $(echo "${R2XX[$k]}" | total) | $(echo "${ROTHER[$k]}" | total) | $(echo "${RERR[$k]}" | total) | $(echo "${RNOTHIT[$k]}" | total) | $(echo "${RDEPTH[$k]}" | median) | $(echo "${RDRAIN[$k]}" | median) s | $(echo "${REVENTS[$k]}" | total) ($(echo "${RDUPS[$k]}" | total) repeated) | $(echo "${RPEAK[$k]}" | median), $(echo "${RIN[$k]}" | median) | $(echo "${RCPU[$k]}" | median) | $(echo "${RCOMMITS[$k]}" | median), $(echo "${RCOMMIT[$k]}" | median), $(echo "${RSLOW[$k]}" | median)% | ${RROUNDS[$k]} |"
      done
    done
    echo
  } | out rates
  took rates
fi

# HTTP/1.1 against HTTP/2 to the same distant upstream: fast at 2,000 events/s, the replay
# window's calls on a pool of connections or as streams on one.
if has protocol; then
  only_running $FAR_PID $FARFAST_PID $FARH2_PID
  declare -A HRPS HP99 HCONNS HCPU HDRAIN HEVENTS H2XX HC0 HROUNDS
  repeated0=$REPEATED
  # Connections opened during this section only: farfast also served the sections before.
  for t in farfast farh2; do
    admin_var=${t^^}_ADMIN; HC0[$t]=$(counter "${!admin_var}" p13n_edge_upstream_connections_opened_total)
  done
  for round in $(seq "$ROUNDS"); do
    for t in farfast farh2; do
      port_var=${t^^}; admin_var=${t^^}_ADMIN; pid_var=${t^^}_PID
      steady_far_run "round $round $t at 2000/s" "${!port_var}" "${!admin_var}" "$FAR" 2000 "$RATE_SECS" "${!pid_var}"
      HCONNS[$t]=$(( $(counter "${!admin_var}" p13n_edge_upstream_connections_opened_total) - HC0[$t] ))
      HRPS[$t]+="$RUN_RPS "; HP99[$t]+="$RUN_P99 "; HCPU[$t]+="$RUN_CPU "; HDRAIN[$t]+="$RUN_DRAIN "
      HEVENTS[$t]+="$RUN_EVENTS "; H2XX[$t]+="$RUN_2XX "; HROUNDS[$t]+="${HROUNDS[$t]:+, }$RUN_P99 ($RUN_STOLEN%)"
      echo "round $round $t: $RUN_RPS req/s, p99 $RUN_P99 ms, $RUN_CPU µs/answer, drained in ${RUN_DRAIN}s, $RUN_STOLEN% of the machine's CPU stolen" >&2
    done
  done
  {
    echo "HTTP/1.1 against HTTP/2 to the upstream (\`upstream.protocol\`): \`fast\` at 2,000 events/s for"
    echo "${RATE_SECS}s in front of the emulator answering after 50 ms, as above; medians of $ROUNDS runs."
    echo "*Connections opened* is the rise of p13n_edge_upstream_connections_opened_total over this"
    echo "section's runs and warm-ups, all rounds together; CPU is the proxy's per answer, its"
    echo "replayed upstream call included (repeated runs' connections too). A run with more than"
    echo "${STEAL_LIMIT}% of the machine's CPU stolen was run again, up to $TRIES times in all, the last kept"
    echo "(each try's events checked for loss); runs repeated: $((REPEATED - repeated0))."
    echo
    echo "| protocol | req/s | p99 ms | connections opened | drain | 2xx answers | events at the upstream | proxy CPU µs/answer | each round: p99 ms (CPU stolen) |"
    echo "|---|---|---|---|---|---|---|---|---|"
    for t in farfast farh2; do
      name=$([ "$t" = farh2 ] && echo "h2" || echo "HTTP/1.1")
      echo "| $name | $(echo "${HRPS[$t]}" | median) | $(echo "${HP99[$t]}" | median) | ${HCONNS[$t]} | $(echo "${HDRAIN[$t]}" | median) s | $(echo "${H2XX[$t]}" | total) | $(echo "${HEVENTS[$t]}" | total) | $(echo "${HCPU[$t]}" | median) | ${HROUNDS[$t]} |"
    done
    echo
  } | out protocol
  took protocol
fi

# The quota: fast mode with max_events_per_second = 500, 2,000 events/s offered. The upstream
# must never see more than 500 calls in a second; every event still arrives, later.
if has quota; then
  only_running $QEMU_PID $QUOTA_PID
  QUOTA_RATE=2000
  # The misses of the warm-up are live calls under the quota: 16 connections, 50 ms each.
  warm_once "$QUOTA" 5 16
  cached=$(metric "$QUOTA_ADMIN" p13n_edge_cache_entries)
  [ "${cached:-0}" -ge 1024 ] || { echo "quota: only ${cached:-0} of 1024 visitors cached after the warm-up" >&2; exit 1; }
  drain "$QUOTA_ADMIN" >/dev/null
  far_run "$QUOTA" "$QUOTA_ADMIN" "$QEMU" "$QUOTA_RATE" "$RATE_SECS" "$QUOTA_PID"
  check_events "quota" "$RUN_2XX" "$RUN_EVENTS"
  peak=$RUN_PEAK
  verdict=$([ "$peak" -le 500 ] && echo "within the quota" || echo "OVER the quota")
  echo "quota: $RUN_RPS req/s, statuses $RUN_STATUSES, $RUN_NOT_HITS not hits, spool $RUN_DEPTH, drained in ${RUN_DRAIN}s, $RUN_EVENTS events, upstream max $peak/s ($verdict), $RUN_DEFERRED quota deferrals, $RUN_CPU µs CPU an answer" >&2
  {
    echo "The quota: \`fast\` with \`max_events_per_second = 500\` in front of an emulator of its own"
    echo "answering after 50 ms, $QUOTA_RATE events/s offered for ${RATE_SECS}s (paced, $RUN_CONNS connections, 1024"
    echo "visitors warmed first, then the emulator's peaks restarted); one run. *Most calls in a second*"
    echo "is the emulator's max_per_second over the run and the drain: it must stay at or below 500."
    echo "*Deferred* counts p13n_edge_quota_deferred_total (calls held back by the quota, each time one"
    echo "is); CPU is the proxy's over the run and the drain, per answer."
    echo
    echo "| req/s | p50 ms | p99 ms | answers by status | socket errors | not cache hits | spool at end | drain | events at the upstream | most calls in a second at the upstream | most at once | deferred | proxy CPU µs/answer |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    echo "| $RUN_RPS | $RUN_P50 | $RUN_P99 | $RUN_STATUSES | $RUN_ERRORS | $RUN_NOT_HITS | $RUN_DEPTH | $RUN_DRAIN s | $RUN_EVENTS ($RUN_DUPS repeated) | $peak ($verdict) | $RUN_IN_FLIGHT | $RUN_DEFERRED | $RUN_CPU |"
    echo
  } | out quota
  took quota
fi

# The browser-facing path: TLS and HTTP/2 (h2load, 32 connections of 8 streams each, one
# visitor's event) to p13n-edge pass-through's TLS listener, nginx and HAProxy terminating TLS
# and doing the same job, all in front of the same static upstream.
if has tls; then
  only_running $TLSPASS_PID $NGX_TLS_MASTER $HAP_TLS_PID
  declare -A TLS_URL=([pass]="https://127.0.0.1:$TLSPASS/demo_db/pageviews"
    [nginx]="https://127.0.0.1:$NGX_TLS/demo_db/pageviews" [haproxy]="https://127.0.0.1:$HAP_TLS/demo_db/pageviews")
  declare -A TLS_PID=([pass]=$TLSPASS_PID [nginx]=$NGX_TLS_WORKER [haproxy]=$HAP_TLS_PID)
  TLS_ORDER=(nginx haproxy pass)
  h2() { h2load -c 32 -m 8 -d "$work/body.json" -H 'Content-Type: application/json' "$@"; }
  for t in "${TLS_ORDER[@]}"; do  # warm up, and check each answers 2xx over HTTP/2
    out=$(h2 -n 2000 "${TLS_URL[$t]}")
    echo "$out" | grep -q "Application protocol: h2" || { echo "$t: no HTTP/2"; echo "$out"; exit 1; }
    echo "$out" | grep -q "status codes: 2000 2xx" || { echo "$t: not every answer 2xx"; echo "$out"; exit 1; }
  done
  declare -A TRPS TMEAN TMAX TCPU TBAD TSTOLEN
  repeated0=$REPEATED
  for round in $(seq "$ROUNDS"); do
    for t in "${TLS_ORDER[@]}"; do
      # Run again while the host takes more than STEAL_LIMIT% of the CPU (see TRIES).
      for try in $(seq "$TRIES"); do
        s0=$(cpu_ticks "${TLS_PID[$t]}"); st0=$(steal_ticks)
        out=$(h2 -D "$SECS" "${TLS_URL[$t]}")
        stolen=$(stolen_pct "$st0" "$(steal_ticks)")
        s1=$(cpu_ticks "${TLS_PID[$t]}")
        again "$try" "$stolen" "round $round tls $t: $(echo "$out" | awk '/^finished in/ {print $4}') req/s" || break
      done
      TSTOLEN[$t]+="${TSTOLEN[$t]:+, }$stolen%"
      n=$(echo "$out" | awk '/^requests:/ {print $6}')  # done
      ok=$(echo "$out" | awk '/^status codes:/ {print $3}')
      TRPS[$t]+="$(echo "$out" | awk '/^finished in/ {print $4}') "
      TMEAN[$t]+="$(echo "$out" | awk '/^time for request:/ {print $6}' | to_ms) "
      TMAX[$t]+="$(echo "$out" | awk '/^time for request:/ {print $5}' | to_ms) "
      TCPU[$t]+="$(per_req_us "$s0" "$s1" "$n") "
      TBAD[$t]+="$(( n - ok )) "
      echo "round $round tls $t: $(echo "$out" | awk '/^finished in/ {print $4}') req/s" >&2
    done
  done
  {
    echo "The browser-facing path: TLS (a P-256 certificate) and HTTP/2, h2load 1 thread, 32"
    echo "connections of 8 streams each, one visitor's event, ${SECS}s x $ROUNDS rounds, alternating;"
    echo "medians. p13n-edge is pass-through behind its \`[server.tls]\` listener (rustls); nginx"
    echo "($ngx_version) and HAProxy terminate TLS (OpenSSL) and do the job of the first table; all in front"
    echo "of the same static upstream over plain HTTP/1.1. h2load gives no percentiles: mean and max of"
    echo "its time for request. CPU is the TLS server's, per request. A run with more than ${STEAL_LIMIT}% of the"
    echo "machine's CPU stolen was run again, up to $TRIES times in all (the last kept); runs repeated: $((REPEATED - repeated0))."
    echo
    echo "| target | req/s | mean ms | max ms | non-2xx or failed | server CPU µs/req | CPU stolen, each round |"
    echo "|---|---|---|---|---|---|---|"
    declare -A TM TC
    for t in "${TLS_ORDER[@]}"; do
      TM[$t]=$(echo "${TRPS[$t]}" | median); TC[$t]=$(echo "${TCPU[$t]}" | median)
      echo "| $t | ${TM[$t]} | $(echo "${TMEAN[$t]}" | median) | $(echo "${TMAX[$t]}" | median) | $(echo "${TBAD[$t]}" | total) | ${TC[$t]} | ${TSTOLEN[$t]} |"
    done
    echo
    echo "| ratio over TLS + HTTP/2 | req/s | CPU µs/req |"
    echo "|---|---|---|"
    echo "| p13n-edge pass-through / nginx | $(ratio "${TM[pass]}" "${TM[nginx]}") | $(ratio "${TC[pass]}" "${TC[nginx]}") |"
    echo "| p13n-edge pass-through / HAProxy | $(ratio "${TM[pass]}" "${TM[haproxy]}") | $(ratio "${TC[pass]}" "${TC[haproxy]}") |"
    echo
  } | out tls
  took tls
fi

# Memory per cached visitor: RSS of the pass-through proxy before and after N new visitors.
if has memory; then
  only_running $PASS_PID
  rss() { awk '/VmRSS/ {print $2*1024}' "/proc/$1/status"; }
  MEM=""
  base_rss=$(rss "$PASS_PID"); base_entries=$(metric "$PASS_ADMIN" p13n_edge_cache_entries); offset=0
  for n in $VISITORS; do
    while [ "$(metric "$PASS_ADMIN" p13n_edge_cache_entries)" -lt "$n" ]; do
      wrk -t1 -c$CONNS -d5s -s benches/load/visitors.lua "${TARGET[pass]}" -- $offset >/dev/null
      offset=$((offset + 10000000))
    done
    now_rss=$(rss "$PASS_PID"); now_entries=$(metric "$PASS_ADMIN" p13n_edge_cache_entries); payload=${#OFFERS}
    per=$(( (now_rss - base_rss) / (now_entries - base_entries) ))
    MEM+="| $now_entries | $(( now_rss / 1048576 )) MiB | $per B | $(( per - payload - 35 )) B |"$'\n'
  done
  {
    echo "Memory per cached visitor (pass-through proxy, RSS growth over the visitors added; the"
    echo "payload is a ${#OFFERS}-byte offers body plus a 35-byte visitor id):"
    echo
    echo "| visitors cached | RSS | RSS per visitor | overhead beyond payload and id |"
    echo "|---|---|---|---|"
    printf "%s" "$MEM"
    echo
  } | out memory
  took memory
fi

# Two instances behind a round-robin balancer (nginx, one worker), `fast`, spool.sync_interval_ms
# = 100, with and without the shared tier (a redis-server of its own, on loopback): the hit rate
# of returning visitors (benches/load/sessions.lua: each sends 5 events, a round apart), the
# latency through the balancer, and what one shared lookup costs a local miss (the daemons'
# p13n_edge_shared_duration_seconds). New visitors each run; the spools drain between runs.
if has shared; then
  only_running  # its own servers, started below, run
  read -r RDS SOLO_LB SOLO_A SOLO_A_ADMIN SOLO_B SOLO_B_ADMIN SH_LB SH_A SH_A_ADMIN SH_B SH_B_ADMIN <<< "$(ports 11)"
  mkdir -p "$work/redis"
  set -m  # as the servers above: `callgrind` stops these
  redis-server --bind 127.0.0.1 --port "$RDS" --save "" --appendonly no --dir "$work/redis" >"$work/redis.log" 2>&1 & pids+=($!)
  shared_toml="[shared]
url = \"redis://127.0.0.1:$RDS/0\""
  proxy_config solo-a "$SOLO_A" "$SOLO_A_ADMIN" "$UP" fast 100
  proxy_config solo-b "$SOLO_B" "$SOLO_B_ADMIN" "$UP" fast 100
  proxy_config sh-a "$SH_A" "$SH_A_ADMIN" "$UP" fast 100 "" "$shared_toml"
  proxy_config sh-b "$SH_B" "$SH_B_ADMIN" "$UP" fast 100 "" "$shared_toml"
  for n in solo-a solo-b sh-a sh-b; do
    RUST_LOG=warn $BIN run --config "$work/$n.toml" 2>"$work/$n.log" & pids+=($!)
  done
  balancer() { # name port instance-a instance-b
    nginx_conf "$1" <<NGX
  upstream edges { server 127.0.0.1:$3; server 127.0.0.1:$4; keepalive 64; }
  server {
    listen 127.0.0.1:$2;
    location / { proxy_pass http://edges; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
NGX
    "$NGINX" -c "$work/$1.conf" -g 'daemon off;' & pids+=($!)
  }
  balancer lbsolo "$SOLO_LB" "$SOLO_A" "$SOLO_B"
  balancer lbshared "$SH_LB" "$SH_A" "$SH_B"
  set +m
  for p in $RDS $SOLO_LB $SOLO_A $SOLO_B $SH_LB $SH_A $SH_B; do
    for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.1; done
    (echo > /dev/tcp/127.0.0.1/$p) 2>/dev/null || { echo "nothing listens on port $p; logs in $work"; exit 1; }
  done
  declare -A LB=([without]=$SOLO_LB [with]=$SH_LB)
  declare -A ADMINS=([without]="$SOLO_A_ADMIN $SOLO_B_ADMIN" [with]="$SH_A_ADMIN $SH_B_ADMIN")
  # A series' total over admin listeners: name, a label it must carry ("" for any), admins.
  series() { local n=0; for a in "${@:3}"; do
    n=$(awk -v x="$n" -v m="$1" -v l="$2" '(index($1, m "{") == 1 || $1 == m) && (l == "" || index($1, l)) {x += $2} END {print x + 0}' \
      <(curl -s "http://127.0.0.1:$a/metrics")); done; echo "$n"; }
  declare -A SHR SRPS SP50 SP99 GETN GETS GETF S1P50 ONEN ONES
  # About 2,000 requests a second: 20 connections, each waiting 10 ms between its requests.
  PACED=20
  offset=0
  for round in $(seq "$ROUNDS"); do
    for v in without with; do
      url="http://127.0.0.1:${LB[$v]}/demo_db/pageviews"
      # shellcheck disable=SC2086
      h0=$(series p13n_edge_cache_lookups_total 'result="hit"' ${ADMINS[$v]}); l0=$(series p13n_edge_cache_lookups_total "" ${ADMINS[$v]})
      out=$(wrk -t1 -c$CONNS -d"${SECS}s" -s benches/load/sessions.lua "$url" -- $offset)
      offset=$((offset + 100000000))
      if echo "$out" | grep -q "Non-2xx"; then echo "shared $v: non-2xx answers"; echo "$out"; exit 1; fi
      # shellcheck disable=SC2086
      h1=$(series p13n_edge_cache_lookups_total 'result="hit"' ${ADMINS[$v]}); l1=$(series p13n_edge_cache_lookups_total "" ${ADMINS[$v]})
      SHR[$v]+="$(awk -v h="$((h1 - h0))" -v l="$((l1 - l0))" 'BEGIN {printf "%.1f", 100 * h / l}') "
      SRPS[$v]+="$(echo "$out" | awk '/Requests\/sec/ {print $2}') "
      for a in ${ADMINS[$v]}; do drain "$a" >/dev/null; done
      # The same visitors' pattern at a paced rate: latency without the machine saturated.
      # shellcheck disable=SC2086
      gn0=$(series p13n_edge_shared_duration_seconds_count 'op="get"' ${ADMINS[$v]}); gs0=$(series p13n_edge_shared_duration_seconds_sum 'op="get"' ${ADMINS[$v]})
      # shellcheck disable=SC2086
      gf0=$(series p13n_edge_shared_duration_seconds_bucket 'op="get",le="0.00025"' ${ADMINS[$v]})
      out=$(wrk -t1 -c$PACED -d"${SECS}s" --latency -s benches/load/sessions.lua "$url" -- $offset 10)
      offset=$((offset + 100000000))
      if echo "$out" | grep -q "Non-2xx"; then echo "shared $v paced: non-2xx answers"; echo "$out"; exit 1; fi
      SP50[$v]+="$(echo "$out" | wrk_pct 50%) "; SP99[$v]+="$(echo "$out" | wrk_pct 99%) "
      # shellcheck disable=SC2086
      GETN[$v]=$(( ${GETN[$v]:-0} + $(series p13n_edge_shared_duration_seconds_count 'op="get"' ${ADMINS[$v]}) - gn0 ))
      # shellcheck disable=SC2086
      GETS[$v]=$(awk -v a="${GETS[$v]:-0}" -v b="$(series p13n_edge_shared_duration_seconds_sum 'op="get"' ${ADMINS[$v]})" -v c="$gs0" 'BEGIN {print a + b - c}')
      # shellcheck disable=SC2086
      GETF[$v]=$(( ${GETF[$v]:-0} + $(series p13n_edge_shared_duration_seconds_bucket 'op="get",le="0.00025"' ${ADMINS[$v]}) - gf0 ))
      for a in ${ADMINS[$v]}; do drain "$a" >/dev/null; done
      # One request at a time: what a lookup costs with nothing else to wait for.
      # shellcheck disable=SC2086
      gn0=$(series p13n_edge_shared_duration_seconds_count 'op="get"' ${ADMINS[$v]}); gs0=$(series p13n_edge_shared_duration_seconds_sum 'op="get"' ${ADMINS[$v]})
      out=$(wrk -t1 -c1 -d"${SECS}s" --latency -s benches/load/sessions.lua "$url" -- $offset)
      offset=$((offset + 100000000))
      S1P50[$v]+="$(echo "$out" | wrk_pct 50%) "
      # shellcheck disable=SC2086
      ONEN[$v]=$(( ${ONEN[$v]:-0} + $(series p13n_edge_shared_duration_seconds_count 'op="get"' ${ADMINS[$v]}) - gn0 ))
      # shellcheck disable=SC2086
      ONES[$v]=$(awk -v a="${ONES[$v]:-0}" -v b="$(series p13n_edge_shared_duration_seconds_sum 'op="get"' ${ADMINS[$v]})" -v c="$gs0" 'BEGIN {print a + b - c}')
      for a in ${ADMINS[$v]}; do drain "$a" >/dev/null; done
      echo "round $round shared $v: hit rate $(echo "${SHR[$v]}" | awk '{print $NF}')%" >&2
    done
  done
  sh_admins="$SH_A_ADMIN $SH_B_ADMIN"
  # shellcheck disable=SC2086
  {
    shared_hits=$(series p13n_edge_shared_lookups_total 'result="hit"' $sh_admins)
    shared_all=$(series p13n_edge_shared_lookups_total "" $sh_admins)
    errors=$(series p13n_edge_shared_errors_total "" $sh_admins)
    echo "Two p13n-edge instances (\`fast\`, spool.sync_interval_ms = 100, one worker each) behind nginx"
    echo "round-robin, returning visitors (each sends 5 events, a round of 1,021 visitors apart, so that"
    echo "its events alternate between the instances; benches/load/sessions.lua), $ROUNDS rounds of ${SECS}s,"
    echo "alternating; medians. Hit rate: cache hits over lookups, from both instances' metrics (at"
    echo "most 80%: a visitor's first event misses), and req/s, with wrk's $CONNS connections as fast as"
    echo "they go (every process on the machine's $(nproc) cores); p50 and p99 at about 2,000 req/s ($PACED"
    echo "connections, 10 ms between requests), the same visitors' pattern."
    echo
    echo "| 2 instances behind round-robin | hit rate | req/s | p50 ms at 2,000/s | p99 ms at 2,000/s | p50 ms, one at a time |"
    echo "|---|---|---|---|---|---|"
    for v in without with; do
      echo "| $v the shared tier | $(echo "${SHR[$v]}" | median)% | $(echo "${SRPS[$v]}" | median) | $(echo "${SP50[$v]}" | median) | $(echo "${SP99[$v]}" | median) | $(echo "${S1P50[$v]}" | median) |"
    done
    echo
    echo "A shared lookup (one GET on a local miss, over loopback; p13n_edge_shared_duration_seconds):"
    echo "$(awk -v s="${ONES[with]}" -v n="${ONEN[with]}" 'BEGIN {printf "%.0f", n ? 1e6 * s / n : 0}') µs on average one request at a time ($(echo "${ONEN[with]}") lookups), $(awk -v s="${GETS[with]}" -v n="${GETN[with]}" 'BEGIN {printf "%.0f", n ? 1e6 * s / n : 0}') µs at about 2,000 req/s"
    echo "(${GETN[with]}; $(awk -v f="${GETF[with]}" -v n="${GETN[with]}" 'BEGIN {printf "%.1f", n ? 100 * f / n : 0}')% under 250 µs: wrk's paced connections send in bursts, and a lookup's answer"
    echo "waits for the instance's one worker). Over the section $shared_hits of $shared_all shared lookups were hits;"
    echo "$errors operations failed (timeouts of the 5 ms budget, while wrk saturated the machine)."
    echo
  } | out shared
  took shared
fi

# Instructions per request under callgrind: counts, not times, so they hold on a noisy machine.
if has callgrind; then
  only_running  # callgrind.sh starts its own
  SKIP_BUILD=1 BIN_DIR="$BIN_DIR" benches/callgrind.sh | out callgrind
  # And the kernel's side, which callgrind does not count: system calls per request.
  { echo; SKIP_BUILD=1 BIN_DIR="$BIN_DIR" COUNT=syscalls CALLGRIND_TARGETS="pass fast serve-ceiling nginx" benches/callgrind.sh; } | out callgrind
  took callgrind
fi

machine="$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
{
  echo "Measured $(date -u +%Y-%m-%d) on $machine."
  echo
  for s in $ALL_SECTIONS; do
    if [ -f "$work/results-$s.md" ]; then cat "$work/results-$s.md"; fi
  done
} | sed '$ { /^$/d }' > "$work/results.md"
cat "$work/results.md"
# Only a whole run replaces the published figures: a run of some sections would drop the rest.
if [ "$SECTIONS" != "$ALL_SECTIONS" ]; then
  echo "the whole run took $((SECONDS - started)) s; sections \"$SECTIONS\" only: benches/results.md and README left as they were" >&2
  exit 0
fi
cp "$work/results.md" benches/results.md
echo "the whole run took $((SECONDS - started)) s" >&2

# Show the latest figures in the README, between its benchmark markers.
python3 - <<'PY'
import re
readme = open("README.md").read()
table = open("benches/results.md").read()
readme = re.sub(r"(<!-- bench:start -->\n).*?(<!-- bench:end -->)", lambda m: m.group(1) + table + m.group(2), readme, flags=re.S)
open("README.md", "w").write(readme)
PY
