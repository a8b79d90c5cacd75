#!/usr/bin/env bash
# loom-sidecar benchmark: loadgen → loom-sidecar (configs/bench.yaml) → nullbackend, all on
# loopback, one fresh sidecar and backend per row. Prints ONE markdown table on stdout
# (progress goes to stderr); exits 1 if a verification run finds a lost or altered span.
# See bench/README.md for what each column means.
#
# Method: the sidecar acknowledges a request when it is queued, not when it is exported, so an
# open-loop generator only measures how fast a backlog grows. The generator therefore keeps at
# most BENCH_WINDOW spans between "sent" and "counted by the backend" (the backend's stats
# file), and a row ends when the backend has every acknowledged span. CPU and wall time cover
# exactly that interval.
#
# Environment:
#   CARGO_TARGET_DIR     where to build (default: <repo>/target)
#   BENCH_DURATION       load time of each unthrottled row (default 8s)
#   BENCH_RATE_DURATION  load time of the fixed-rate row (default 10s)
#   BENCH_VERIFY_DURATION load time of each verification row (default 4s)
#   BENCH_CONCURRENCY    connections of the generator (default 16)
#   BENCH_WINDOW         spans sent but not yet at the backend, at most (default 32768 = 4
#                        batches; the large shape uses BENCH_WINDOW_LARGE, default 500 = 50 MB)
#   BENCH_EXPORT_COMPRESSION  none (default) or gzip, for the sidecar's exporter
#   BENCH_SIDECAR_PRELOAD  a malloc to LD_PRELOAD into the sidecar only, e.g.
#                        /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 (allocator comparisons)
#   BENCH_NO_BUILD=1     use the binaries already built
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$CARGO_TARGET_DIR/release
CONFIG=$ROOT/configs/bench.yaml
DURATION=${BENCH_DURATION:-8s}
RATE_DURATION=${BENCH_RATE_DURATION:-10s}
VERIFY_DURATION=${BENCH_VERIFY_DURATION:-4s}
CONCURRENCY=${BENCH_CONCURRENCY:-16}
WINDOW=${BENCH_WINDOW:-32768}
WINDOW_LARGE=${BENCH_WINDOW_LARGE:-500}
SEED=${BENCH_SEED:-$$}
CLK_TCK=$(getconf CLK_TCK)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

log() { printf '%s\n' "$*" >&2; }
die() {
    log "bench: $*"
    exit 1
}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/loom-bench.XXXXXX")
PIDS=()

# Stops the processes this script started (and only those): SIGTERM, up to 3 s, then SIGKILL
# (an aborted run need not wait for a sidecar to drain). Then removes the scratch folder.
cleanup() {
    local p i alive
    for p in "${PIDS[@]}"; do
        kill -TERM "$p" 2>/dev/null || true
    done
    for i in $(seq 30); do
        alive=0
        for p in "${PIDS[@]}"; do
            kill -0 "$p" 2>/dev/null && alive=1
        done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for p in "${PIDS[@]}"; do
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }

forget_pid() {
    local p keep=()
    for p in "${PIDS[@]}"; do
        [ "$p" = "$1" ] || keep+=("$p")
    done
    PIDS=("${keep[@]}")
}

# stop PID: SIGTERM, up to 15 s to drain and exit, then SIGKILL.
stop() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 150); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    forget_pid "$pid"
}

# utime + stime of a process (all its threads), in clock ticks.
cpu_ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
# Peak resident set size, KiB.
hwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }

backend_spans() {
    local s
    s=$(cat "$1" 2>/dev/null || true)
    s=$(json_num "$s" spans)
    echo "${s:-0}"
}

# wait_delivered STATS TARGET: until the backend has TARGET spans, or nothing arrives for 3 s.
wait_delivered() {
    local stats=$1 target=$2 last=-1 last_change n
    last_change=$(now)
    while :; do
        n=$(backend_spans "$stats")
        [ "$n" -ge "$target" ] && break
        if [ "$n" != "$last" ]; then
            last=$n
            last_change=$(now)
        elif awk -v a="$(now)" -v b="$last_change" 'BEGIN { exit !(a - b > 3) }'; then
            break
        fi
        sleep 0.05
    done
    echo "$n"
}

start_backend() {
    local name=$1
    shift
    # Every 10 ms: the generator's window paces itself on this file.
    "$BIN/nullbackend" --listen 127.0.0.1:0 --stats-file "$WORK/$name.stats" --stats-interval 10ms "$@" \
        >"$WORK/$name.nb.out" 2>"$WORK/$name.nb.err" &
    NB_PID=$!
    PIDS+=("$NB_PID")
    wait_ready "$WORK/$name.nb.out" "$NB_PID"
    NB_ADDR=$(awk '$1 == "listening" { print $4; exit }' "$WORK/$name.nb.out")
}

start_sidecar() {
    local name=$1 preload=()
    [ -n "${BENCH_SIDECAR_PRELOAD:-}" ] && preload=("LD_PRELOAD=$BENCH_SIDECAR_PRELOAD")
    env "${preload[@]}" BENCH_OTLP_GRPC_ENDPOINT=127.0.0.1:0 BENCH_OTLP_HTTP_ENDPOINT=127.0.0.1:0 \
        BENCH_METRICS_ENDPOINT=127.0.0.1:0 BENCH_BACKEND_ENDPOINT="http://$NB_ADDR" \
        BENCH_BACKEND_HOSTPORT="$NB_ADDR" \
        "$BIN/loom-sidecar" --config "${ROW_CONFIG:-$CONFIG}" >"$WORK/$name.sc.out" 2>"$WORK/$name.sc.err" &
    SC_PID=$!
    PIDS+=("$SC_PID")
    wait_ready "$WORK/$name.sc.out" "$SC_PID"
    SC_GRPC=$(awk '$2 == "otlp" && $3 == "grpc" { print $4 }' "$WORK/$name.sc.out")
    SC_HTTP=$(awk '$2 == "otlp" && $3 == "http" { print $4 }' "$WORK/$name.sc.out")
}

declare -A LIMIT_US=()
limit_us() {
    local key="$1/$2" out
    if [ -z "${LIMIT_US[$key]:-}" ]; then
        out=$("$BIN/loadgen" limit --shape "$1" --spans-per-request "$2" --duration 1s --seed "$SEED" | tail -n1)
        LIMIT_US[$key]=$(json_num "$out" us_per_span)
    fi
    echo "${LIMIT_US[$key]}"
}

ROWS=()
VERIFY_FAILED=0

# run_row SHAPE PROTOCOL SPANS_PER_REQUEST RATE DURATION [verify]
# ROW_CONFIG / ROW_LABEL / ROW_WINDOW (set for one call) run the row on another pipeline,
# named in the shape column, with another window.
run_row() {
    local shape=$1 proto=$2 spr=$3 rate=$4 dur=$5 verify=${6:-}
    local name="$shape-$proto-$spr-$rate${verify:+-verify}${ROW_LABEL:+-$ROW_LABEL}" nb_args=() ep lg
    log "bench: $name ($dur)"
    if [ -n "$verify" ]; then
        "$BIN/loadgen" manifest --shape "$shape" --spans-per-request "$spr" --seed "$SEED" \
            --out "$WORK/$name.manifest" >/dev/null
        nb_args=(--verify "$WORK/$name.manifest")
    fi
    start_backend "$name" "${nb_args[@]}"
    start_sidecar "$name"
    if [ "$proto" = grpc ]; then ep=$SC_GRPC; else ep=$SC_HTTP; fi
    local window=${ROW_WINDOW:-$WINDOW}
    [ "$shape" = large ] && window=$WINDOW_LARGE

    local c0 t0 c1 t1 hwm delivered
    c0=$(cpu_ticks "$SC_PID")
    t0=$(now)
    # In the background and waited for, so SIGINT/SIGTERM reach the trap at once.
    "$BIN/loadgen" send --protocol "$proto" --endpoint "$ep" --shape "$shape" \
        --spans-per-request "$spr" --rate "$rate" --duration "$dur" \
        --concurrency "$CONCURRENCY" --seed "$SEED" \
        --max-pending "$window" --delivered-from "$WORK/$name.stats" >"$WORK/$name.lg.out" 2>&1 &
    local lg_pid=$!
    PIDS+=("$lg_pid")
    wait "$lg_pid" || die "loadgen failed: $(cat "$WORK/$name.lg.out")"
    forget_pid "$lg_pid"
    lg=$(tail -n1 "$WORK/$name.lg.out")
    local acked refused failed
    acked=$(json_num "$lg" spans_acked)
    refused=$(json_num "$lg" spans_refused)
    failed=$(json_num "$lg" spans_failed)
    # The sidecar acknowledges on enqueue; the row ends when the backend has it all.
    delivered=$(wait_delivered "$WORK/$name.stats" "$acked")
    t1=$(now)
    c1=$(cpu_ticks "$SC_PID")
    hwm=$(hwm_kib "$SC_PID")
    stop "$SC_PID"
    stop "$NB_PID"

    local lim
    lim=$(limit_us "$shape" "$spr")
    local notes
    notes=$(awk -v a="$acked" -v r="$refused" -v f="$failed" -v d="$delivered" 'BEGIN {
        s = sprintf("acked %d", a)
        if (r > 0) s = s sprintf(", refused %d (%.1f%%)", r, 100 * r / (a + r + f))
        if (f > 0) s = s sprintf(", failed %d", f)
        if (d < a) s = s sprintf(", LOST %d", a - d)
        print s }')
    if [ -n "$verify" ]; then
        local vs unique corrupt dup incomplete
        vs=$(cat "$WORK/$name.stats")
        unique=$(json_num "$vs" unique_spans)
        corrupt=$(json_num "$vs" corrupt_spans)
        dup=$(json_num "$vs" duplicate_spans)
        incomplete=$(json_num "$vs" requests_incomplete)
        if [ "$unique" = "$acked" ] && [ "$corrupt" = 0 ] && [ "$dup" = 0 ] && [ "$incomplete" = 0 ]; then
            notes="verified: all $acked acked spans delivered once, intact"
        else
            VERIFY_FAILED=1
            notes="VERIFY FAILED: $unique unique of $acked acked, $corrupt corrupt, $dup duplicate, $incomplete incomplete requests; $(sed -n 's/.*"first_error":\("[^"]*"\).*/\1/p' <<<"$vs")"
        fi
        [ "$refused" != 0 ] && notes="$notes; refused $refused"
    fi
    local load
    if [ -n "$verify" ]; then
        load="verify"
    elif awk -v r="$rate" 'BEGIN { exit !(r > 0) }'; then
        load="$rate/s"
    else
        load="max"
    fi
    ROWS+=("$(awk -v shape="$shape${ROW_LABEL:+ + $ROW_LABEL}" -v proto="$proto" -v spr="$spr" -v load="$load" \
        -v c0="$c0" -v c1="$c1" -v t0="$t0" -v t1="$t1" -v tck="$CLK_TCK" -v d="$delivered" \
        -v hwm="$hwm" -v lim="$lim" -v notes="$notes" 'BEGIN {
        cpu = (c1 - c0) / tck; wall = t1 - t0
        us = d > 0 ? cpu * 1e6 / d : 0
        printf "| %s | %s | %d | %s | %.0f | %.2f | %.1f | %.1f | %.2f | %.2f | %s |",
            shape, proto, spr, load, d / wall, us, 100 * cpu / wall, hwm / 1024, lim,
            (lim > 0 ? us / lim : 0), notes }')")
}

START=$(now)
if [ -z "${BENCH_NO_BUILD:-}" ]; then
    log "bench: cargo build --release -p loom-sidecar (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    cargo build --release -q -p loom-sidecar --bins
fi
for b in loom-sidecar loadgen nullbackend; do
    [ -x "$BIN/$b" ] || die "$BIN/$b missing; build with cargo build --release -p loom-sidecar"
done
for c in "$CONFIG" "$ROOT/configs/bench-tail-sampling.yaml" "$ROOT/configs/bench-loadbalancing.yaml"; do
    "$BIN/loom-sidecar" validate --config "$c" >/dev/null || die "$c does not validate"
done

run_row testbed grpc 100 0 "$DURATION"
run_row testbed grpc 1000 0 "$DURATION"
run_row testbed http 1000 0 "$DURATION"
run_row loom grpc 100 0 "$DURATION"
run_row loom http 100 0 "$DURATION"
run_row large grpc 10 0 "$DURATION"
run_row large http 10 0 "$DURATION"
run_row testbed grpc 100 10000 "$RATE_DURATION"
run_row loom grpc 100 0 "$VERIFY_DURATION" verify
run_row loom http 100 0 "$VERIFY_DURATION" verify
# The gateway tier at 100k spans/s beside the plain pipeline (docs/gateway.md). Tail sampling
# holds every span for decision_wait (1 s), so its window must cover a second of load.
run_row testbed grpc 100 100000 "$RATE_DURATION"
ROW_CONFIG=$ROOT/configs/bench-tail-sampling.yaml ROW_LABEL=tail_sampling ROW_WINDOW=262144 \
    run_row testbed grpc 100 100000 "$RATE_DURATION"
ROW_CONFIG=$ROOT/configs/bench-loadbalancing.yaml ROW_LABEL=loadbalancing \
    run_row testbed grpc 100 100000 "$RATE_DURATION"

log "bench: done in $(awk -v a="$(now)" -v b="$START" 'BEGIN { printf "%.0f", a - b }') s ($(nproc) CPUs: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo))"
echo "| shape | protocol | spans/request | load | spans/s delivered | sidecar CPU µs/span | sidecar CPU % of one core | sidecar peak RSS MiB | limit µs/span | sidecar/limit | notes |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
exit "$VERIFY_FAILED"
