#!/usr/bin/env bash
# loom-sidecar live reload under continuous load (issue #19's must-show): loadgen sends at a
# fixed rate through loom-sidecar to nullbackend `main` (which verifies every span against the
# loadgen template and counts duplicates) while the sidecar is reloaded by SIGHUP five times:
#   1. a sampler rule change   2. an added exporter (otlp/extra → backend A)
#   3. a changed endpoint (otlp/extra → backend C)   4. the exporter removed   5. an invalid file
# Checks: loadgen saw 0 refused and 0 failed requests (a connection reset fails a request);
# `main` got every acknowledged span once; A and C got spans, none twice; every reload counted
# with its result; /health answered 200 on every poll.
#
# Usage: bench/reload.sh   (RELOAD_RATE spans/s, default 20000; RELOAD_DURATION, default 25s;
#        BENCH_NO_BUILD=1 skips the release build)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release
RATE=${RELOAD_RATE:-20000}
DURATION=${RELOAD_DURATION:-25s}
SEED=19
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
die() { echo "reload bench: $*" >&2; exit 1; }
# shellcheck source=bench/lib.sh
source bench/lib.sh
READY_TRIES=400
[ -n "${BENCH_NO_BUILD:-}" ] || cargo build --release -q -p loom-sidecar --bins

addr_of() { awk -v c="$2" -v k="$3" '$1 == "listening" && $2 == c && $3 == k { print $4; exit }' "$1"; }

"$BIN/loadgen" manifest --spans-per-request 100 --seed "$SEED" --out "$WORK/manifest" >/dev/null
declare -A BACKEND=()
for name in main a c; do
    "$BIN/nullbackend" --listen 127.0.0.1:0 --stats-file "$WORK/$name.stats" --stats-interval 50ms \
        --verify "$WORK/manifest" >"$WORK/$name.out" 2>"$WORK/$name.err" &
    PIDS+=($!)
    wait_ready "$WORK/$name.out" $!
    BACKEND[$name]=$(addr_of "$WORK/$name.out" nullbackend grpc)
done

# config RULE_AGENT [EXTRA_BACKEND]
config() {
    local extra_exporter="" extra_list=""
    if [ -n "${2:-}" ]; then
        extra_exporter="  otlp/extra: { endpoint: \"http://$2\", compression: none }"
        extra_list=", otlp/extra"
    fi
    cat <<EOF
receivers:
  otlp:
    protocols:
      grpc: { endpoint: 127.0.0.1:0 }
processors:
  memory_limiter: { limit_mib: 256, spike_limit_mib: 64 }
  sampler:
    default: { sampler: always_on }
    rules:
      - { name: quiet, match: { agent: "$1" }, sampler: always_off }
  batch: { send_batch_size: 8192, timeout: 200ms }
exporters:
  otlp/main: { endpoint: "http://${BACKEND[main]}", compression: none }
$extra_exporter
extensions:
  health_check: { endpoint: 127.0.0.1:0 }
service:
  extensions: [health_check]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [memory_limiter, sampler, batch]
      exporters: [otlp/main$extra_list]
  telemetry:
    metrics: { address: 127.0.0.1:0 }
    logs: { level: warn }
  shutdown_grace: 5s
EOF
}

CFG=$WORK/sidecar.yaml
config "no-such-agent-1" >"$CFG"
"$BIN/loom-sidecar" --config "$CFG" >"$WORK/sc.out" 2>"$WORK/sc.err" &
SC=$!
PIDS+=("$SC")
wait_ready "$WORK/sc.out" "$SC"
GRPC=$(addr_of "$WORK/sc.out" otlp grpc)
METRICS=$(addr_of "$WORK/sc.out" metrics http)
HEALTH=$(addr_of "$WORK/sc.out" health_check http)

reloads() { curl -s "http://$METRICS/metrics" | sed -n "s/^loom_sidecar_config_reload_total{result=\"$1\"} //p"; }
# reload RESULT WANT: SIGHUP, then wait until the reload is counted.
reload() {
    local t0 i
    t0=$(date +%s.%N)
    kill -HUP "$SC"
    for i in $(seq 400); do
        [ "$(reloads "$1")" = "$2" ] && break
        sleep 0.025
    done
    [ "$(reloads "$1")" = "$2" ] || die "reload $1 #$2 not counted"
    printf '  reload %-34s %s in %.0f ms\n' "$3" "$1" "$(echo "($(date +%s.%N) - $t0) * 1000" | bc)"
}

# Health, polled every 50 ms for the whole run.
(
    ok=0 bad=0
    while [ ! -e "$WORK/stop" ]; do
        if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$HEALTH/")" = 200 ]; then
            ok=$((ok + 1))
        else
            bad=$((bad + 1))
        fi
        sleep 0.05
    done
    echo "$ok $bad" >"$WORK/health"
) &
PIDS+=($!)

"$BIN/loadgen" send --endpoint "http://$GRPC" --spans-per-request 100 --rate "$RATE" \
    --duration "$DURATION" --concurrency 4 --seed "$SEED" >"$WORK/lg.out" 2>&1 &
LG=$!
PIDS+=("$LG")
echo "reload bench: loadgen at $RATE spans/s for $DURATION; load average $(cut -d' ' -f1-3 /proc/loadavg)"
sleep 4
config "no-such-agent-2" >"$CFG"; reload success 1 "1: sampler rule changed"
sleep 4
config "no-such-agent-2" "${BACKEND[a]}" >"$CFG"; reload success 2 "2: exporter added (A)"
sleep 4
config "no-such-agent-2" "${BACKEND[c]}" >"$CFG"; reload success 3 "3: exporter endpoint changed (C)"
sleep 4
config "no-such-agent-2" >"$CFG"; reload success 4 "4: exporter removed"
sleep 3
config "no-such-agent-2" | sed 's/timeout: 200ms/timeout: soon/' >"$CFG"; reload failed 1 "5: invalid file"
wait "$LG" || die "loadgen failed: $(cat "$WORK/lg.out")"
touch "$WORK/stop"
lg=$(tail -n1 "$WORK/lg.out")
acked=$(json_num "$lg" spans_acked)
refused=$(json_num "$lg" spans_refused)
failed=$(json_num "$lg" spans_failed)
rate=$(json_num "$lg" acked_spans_per_s)

# The batcher holds up to 200 ms; wait for main to have everything.
for i in $(seq 200); do
    [ "$(json_num "$(cat "$WORK/main.stats")" unique_spans)" -ge "$acked" ] && break
    sleep 0.05
done
sleep 1 # a duplicate would come right after
for i in $(seq 100); do [ -e "$WORK/health" ] && break; sleep 0.05; done
read -r h_ok h_bad <"$WORK/health"
fail=0
check() { if eval "$2"; then echo "  PASS $1"; else echo "  FAIL $1"; fail=1; fi; }
main_stats=$(cat "$WORK/main.stats")
a_stats=$(cat "$WORK/a.stats")
c_stats=$(cat "$WORK/c.stats")
m_unique=$(json_num "$main_stats" unique_spans)
m_dup=$(json_num "$main_stats" duplicate_spans)
m_corrupt=$(json_num "$main_stats" corrupt_spans)
a_unique=$(json_num "$a_stats" unique_spans)
c_unique=$(json_num "$c_stats" unique_spans)
a_dup=$(json_num "$a_stats" duplicate_spans)
c_dup=$(json_num "$c_stats" duplicate_spans)
echo "reload bench: loadgen acknowledged $acked spans ($rate spans/s), refused $refused, failed $failed"
echo "  main: $m_unique unique, $m_dup duplicate, $m_corrupt corrupt; A: $a_unique (+$a_dup dup); C: $c_unique (+$c_dup dup); health $h_ok x 200, $h_bad other"
check "0 refused and 0 failed requests at the client (no reset connection)" "[ $refused = 0 ] && [ $failed = 0 ]"
check "main got every acknowledged span once ($m_unique of $acked)" "[ $m_unique = $acked ] && [ $m_dup = 0 ] && [ $m_corrupt = 0 ]"
check "the added, then moved exporter delivered to A and C, none twice" "[ $a_unique -gt 0 ] && [ $c_unique -gt 0 ] && [ $a_dup = 0 ] && [ $c_dup = 0 ]"
check "/health 200 on every poll" "[ $h_bad = 0 ] && [ $h_ok -gt 0 ]"
check "the invalid file was refused and logged with its YAML path" "grep -q 'processors.batch.timeout' '$WORK/sc.err'"
exit $fail
