# shellcheck shell=bash
# Helpers shared by the bench scripts (sourced, not run). The caller defines `die MESSAGE`.

# wait_ready FILE PID: until the process prints `ready` (loom-sidecar and nullbackend do, after
# their `listening` lines). READY_TRIES polls 50 ms apart, default 200 (10 s).
wait_ready() {
    local file=$1 pid=$2 tries=${READY_TRIES:-200} i
    for i in $(seq "$tries"); do
        grep -qx ready "$file" 2>/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || die "process $pid exited during start-up: $(cat "${file%.out}.err" 2>/dev/null)"
        sleep 0.05
    done
    die "no 'ready' from process $pid within $((tries * 50)) ms"
}

# json_num JSON KEY: a numeric field of a flat JSON line (keys here are unique).
json_num() { sed -n "s/.*\"$2\":\([-0-9.e+]*\).*/\1/p" <<<"$1" | head -n1; }
