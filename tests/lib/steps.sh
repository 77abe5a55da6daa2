# shellcheck shell=bash
# Steps with their durations, and jobs that run beside them, for tests/check.
# Sourced; set STEPS_LABEL (e.g. "check") first. Every step prints when it starts; its
# duration is recorded when the next one starts; print_times prints them all.

STEPS_START=$SECONDS
STEP_NAME=""
STEP_START=$SECONDS
STEP_TIMES=()
declare -A JOB_PID JOB_START

# step NAME: ends the step before and starts NAME.
step() {
  end_step
  STEP_NAME="$*"
  STEP_START=$SECONDS
  printf '\n==> [%4ds] %s\n' "$((SECONDS - STEPS_START))" "$*"
}

end_step() {
  [[ -n "$STEP_NAME" ]] || return 0
  record_time "$((SECONDS - STEP_START))" "$STEP_NAME"
  STEP_NAME=""
}

record_time() {
  STEP_TIMES+=("$(printf '%5ds  %s' "$1" "$2")")
  printf '==> [%4ds] %s: %ds\n' "$((SECONDS - STEPS_START))" "$2" "$1"
}

print_times() {
  end_step
  printf '\n%s step durations (total %ds):\n' "${STEPS_LABEL:-}" "$((SECONDS - STEPS_START))"
  printf '  %s\n' "${STEP_TIMES[@]}"
}

# start_job NAME LOG CMD...: runs CMD in the background, its output in LOG, so that long
# builds that use different resources (Go, cargo, the network) overlap.
start_job() {
  local name="$1" log="$2"
  shift 2
  mkdir -p "$(dirname "$log")"
  printf '==> [%4ds] started beside the steps: %s (log: %s)\n' "$((SECONDS - STEPS_START))" "$name" "$log"
  # Its own process group, so stop_jobs ends the builds it runs too.
  setsid "$@" >"$log" 2>&1 </dev/null &
  JOB_PID[$name]=$!
  JOB_START[$name]=$SECONDS
}

# wait_job NAME LOG: waits for the job, printing its last log line every minute; records
# its duration; on failure prints the log's tail and returns non-zero.
wait_job() {
  local name="$1" log="$2" pid="${JOB_PID[$1]}" rc=0 next=$((SECONDS + 60))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= next)); then
      printf '    [%4ds] still running: %s (%ds): %s\n' "$((SECONDS - STEPS_START))" "$name" \
        "$((SECONDS - JOB_START[$name]))" "$(tail -n 1 "$log" | cut -c1-120)"
      next=$((SECONDS + 60))
    fi
    sleep 1
  done
  wait "$pid" || rc=$?
  unset "JOB_PID[$name]"
  record_time "$((SECONDS - JOB_START[$name]))" "$name (beside the steps)"
  if ((rc != 0)); then
    echo "---- last lines of $log ----" >&2
    tail -n 40 "$log" >&2
    return "$rc"
  fi
}

# stop_jobs: ends jobs still running (when a step failed).
stop_jobs() {
  local name
  for name in "${!JOB_PID[@]}"; do
    kill -- "-${JOB_PID[$name]}" 2>/dev/null || true
  done
}
