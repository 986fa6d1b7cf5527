# deploy/local/stack.d/prometheus.sh: the `prometheus` component of
# deploy/local/stack, a Prometheus (Debian's package, installed with apt-get
# when absent) scraping the services with the repository's config and rules.
# Defines prom_up, prom_down, prom_status and prom_purge.
# Sourced by deploy/local/stack after common.sh and alertmanager.sh (its config
# points at ALERTMANAGER_PORT); not run on its own.
# shellcheck shell=bash

PROMETHEUS_PORT=${PROMETHEUS_PORT:-9090}
PROMETHEUS_BIN=${PROMETHEUS_BIN:-}
PROMETHEUS_SCRAPE_INTERVAL=${PROMETHEUS_SCRAPE_INTERVAL:-15s}
PROMETHEUS_START_TIMEOUT=${PROMETHEUS_START_TIMEOUT:-60}
PROMETHEUS_STOP_TIMEOUT=30

PROM_SRC="$REPO/deploy/prometheus"      # prometheus.yml and rules/ of the repository
PROM_DIR="$STACK_DIR/prometheus"        # prometheus.yml (our copy), log, pid file
PROM_DATA="$PROM_DIR/data"              # --storage.tsdb.path
PROM_CONFIG="$PROM_DIR/prometheus.yml"
PROM_PID_FILE="$PROM_DIR/prometheus.pid"
PROM_PORT_FILE="$PROM_DIR/prometheus.port"
PROM_LOG="$PROM_DIR/prometheus.log"

# The Prometheus binary: PROMETHEUS_BIN, Debian's, or `prometheus` on PATH.
find_prom_bin() {
    if [[ -n $PROMETHEUS_BIN ]]; then
        [[ -x $PROMETHEUS_BIN ]] || die "PROMETHEUS_BIN=$PROMETHEUS_BIN is not executable"
        printf '%s' "$PROMETHEUS_BIN"
        return 0
    fi
    if [[ -x /usr/bin/prometheus ]]; then
        printf '%s' /usr/bin/prometheus
        return 0
    fi
    command -v prometheus
}

prom_bin() {
    local b
    if b=$(find_prom_bin); then printf '%s' "$b"; return 0; fi
    # Without recommends: Debian's prometheus recommends prometheus-node-exporter.
    apt_install --no-install-recommends prometheus
    # The service would listen on *:9090 with /etc/prometheus's config.
    stop_system_service prometheus prometheus
    # Only if something pulled it in anyway (it would listen on *:9100).
    if [[ -x /etc/init.d/prometheus-node-exporter || -f /lib/systemd/system/prometheus-node-exporter.service ]]; then
        stop_system_service prometheus-node-exporter prometheus
    fi
    b=$(find_prom_bin) || die "prometheus: installed prometheus but found no binary"
    printf '%s' "$b"
}

# A Prometheus (not just any HTTP server: Alertmanager has /-/ready too) is
# ready on 127.0.0.1:$1.
prom_answers() { http_ok "$1" /-/ready && http_ok "$1" /api/v1/status/buildinfo; }

# PID recorded by `up` if that process is still our Prometheus.
prom_our_pid() {
    [[ -f $PROM_PID_FILE ]] || return 1
    local pid
    pid=$(<"$PROM_PID_FILE")
    pid_alive "$pid" || return 1
    [[ $(proc_cmdline "$pid") == *"--config.file=$PROM_CONFIG"* ]] || return 1
    printf '%s' "$pid"
}

# Our copy of deploy/prometheus/prometheus.yml: every scrape_interval and
# evaluation_interval set to PROMETHEUS_SCRAPE_INTERVAL, rule_files replaced by
# the repository's rules (absolute path), Prometheus's own target on
# PROMETHEUS_PORT and the Alertmanager's on ALERTMANAGER_PORT. Written to a
# temporary file and renamed, so a reload never reads half a file.
write_prom_config() {
    local src="$PROM_SRC/prometheus.yml" rules="$PROM_SRC/rules/*.rules.yml" tmp="$PROM_CONFIG.tmp"
    [[ -f $src ]] || die "prometheus: $src not found"
    [[ $rules != *'"'* && $rules != *\\* ]] || die "prometheus: cannot quote the path $rules in YAML"
    {
        printf '# Written by deploy/local/stack on every up from %s; edits are overwritten.\n' "$src"
        awk -v interval="$PROMETHEUS_SCRAPE_INTERVAL" -v rules="$rules" \
            -v prom_target="127.0.0.1:$PROMETHEUS_PORT" -v am_target="127.0.0.1:$ALERTMANAGER_PORT" '
            # Inside the top-level rule_files list: drop its entries (and comments).
            in_rules && /^([ \t]|-|#|$)/ { next }
            { in_rules = 0 }
            /^rule_files:/ {
                print "rule_files:"
                print "  - \"" rules "\""
                print ""
                in_rules = 1
                next
            }
            /^[ \t]*(scrape|evaluation)_interval:/ {
                sub(/:.*/, ": " interval)
            }
            { gsub(/"127\.0\.0\.1:9090"/, "\"" prom_target "\"")
              gsub(/"127\.0\.0\.1:9095"/, "\"" am_target "\"")
              print }
        ' "$src"
    } >"$tmp"
    if ! { grep -q "^  scrape_interval: $PROMETHEUS_SCRAPE_INTERVAL\$" "$tmp" &&
            grep -q "^  evaluation_interval: $PROMETHEUS_SCRAPE_INTERVAL\$" "$tmp" &&
            grep -qF "  - \"$rules\"" "$tmp"; }; then
        rm -f "$tmp"
        die "prometheus: $src no longer has the global scrape_interval/evaluation_interval and rule_files this script rewrites"
    fi
    compgen -G "$rules" >/dev/null || say "prometheus: warning: no rule files match $rules"
    mv -f "$tmp" "$PROM_CONFIG"
}

prom_fail() {
    say "prometheus: $1"
    if [[ -s $PROM_LOG ]]; then
        printf 'stack: --- last lines of %s ---\n' "$PROM_LOG" >&2
        tail -n 30 "$PROM_LOG" >&2
    fi
    exit 1
}

# Make our running Prometheus read the rewritten config (and rules).
prom_reload() { # pid
    if command -v curl >/dev/null; then
        local out
        out=$(curl -sS --max-time 30 -X POST -w '\n%{http_code}' \
                "http://127.0.0.1:$PROMETHEUS_PORT/-/reload" 2>&1 9>&-) || true
        [[ ${out##*$'\n'} == 200 ]] ||
            prom_fail "reloading the config of pid $1 failed: ${out//$'\n'/ }"
    else
        kill -HUP "$1"  # same reload, without an answer to check
    fi
}

prom_up() {
    local where="127.0.0.1:$PROMETHEUS_PORT" t0 pid bin deadline
    t0=$(now_us)

    if pid=$(prom_our_pid); then
        local was_port
        was_port=$(cat "$PROM_PORT_FILE" 2>/dev/null || echo "?")
        [[ $was_port == "$PROMETHEUS_PORT" ]] ||
            die "prometheus: the one started from $STACK_DIR (pid $pid) listens on $was_port, not $PROMETHEUS_PORT; 'down prometheus' it first"
        prom_answers "$PROMETHEUS_PORT" ||
            prom_fail "pid $pid (started by stack) is running but not ready on $where"
        write_prom_config
        prom_reload "$pid"
        say "prometheus: already running on $where (pid $pid, started by stack); config rewritten and reloaded (interval $PROMETHEUS_SCRAPE_INTERVAL)"
        return 0
    fi
    rm -f "$PROM_PID_FILE"

    if prom_answers "$PROMETHEUS_PORT"; then
        may_reuse prometheus "$where"
        say "prometheus: reusing the one already on $where (not started by stack: its own config; down leaves it alone)"
        return 0
    fi
    port_open "$PROMETHEUS_PORT" && die "prometheus: $where is taken by something that is not a ready Prometheus; set PROMETHEUS_PORT"

    bin=$(prom_bin)
    mkdir -p "$PROM_DATA"
    write_prom_config
    printf '%s\n' "$PROMETHEUS_PORT" >"$PROM_PORT_FILE"
    say "prometheus: starting $("$bin" --version 2>&1 9>&- | head -n 1 | sed 's/ *(.*//') on $where (interval $PROMETHEUS_SCRAPE_INTERVAL, state $PROM_DIR)"
    : >"$PROM_LOG"
    spawn_detached "$PROM_PID_FILE" "$PROM_LOG" \
        "$bin" --config.file="$PROM_CONFIG" --storage.tsdb.path="$PROM_DATA" \
        --web.listen-address="$where" --web.enable-lifecycle

    deadline=$(( $(now_us) + PROMETHEUS_START_TIMEOUT * 1000000 ))
    pid=""
    while :; do
        if [[ -z $pid ]]; then pid=$(cat "$PROM_PID_FILE" 2>/dev/null || true); fi
        if [[ -n $pid ]] && ! pid_alive "$pid"; then
            rm -f "$PROM_PID_FILE"
            prom_fail "exited during startup"
        fi
        if prom_answers "$PROMETHEUS_PORT"; then
            break
        fi
        if (( $(now_us) > deadline )); then
            prom_fail "not ready on $where after ${PROMETHEUS_START_TIMEOUT}s (pid ${pid:-?} left running; 'down prometheus' stops it)"
        fi
        sleep 0.1
    done
    say "prometheus ready on $where in $(elapsed "$t0")s (pid $pid, log $PROM_LOG)"
}

prom_down() {
    local pid t0
    if ! pid=$(prom_our_pid); then
        rm -f "$PROM_PID_FILE"
        if prom_answers "$PROMETHEUS_PORT"; then
            say "prometheus: the one on 127.0.0.1:$PROMETHEUS_PORT was not started by stack from $STACK_DIR; leaving it alone"
        else
            say "prometheus: not running (nothing started by stack)"
        fi
        return 0
    fi
    t0=$(now_us)
    say "prometheus: stopping pid $pid (SIGTERM)"
    stop_pid prometheus "$pid" "$PROMETHEUS_STOP_TIMEOUT"
    rm -f "$PROM_PID_FILE"
    say "prometheus: stopped ($(elapsed "$t0")s)"
}

prom_status() {
    local where="127.0.0.1:$PROMETHEUS_PORT" pid
    if pid=$(prom_our_pid); then
        local port
        port=$(cat "$PROM_PORT_FILE" 2>/dev/null || echo "$PROMETHEUS_PORT")
        where="127.0.0.1:$port"
        if prom_answers "$port"; then
            printf '%-12s %-5s %-16s %s\n' prometheus up "$where" "started by stack (pid $pid, $PROM_DIR)"
            return 0
        fi
        printf '%-12s %-5s %-16s %s\n' prometheus down "$where" "started by stack (pid $pid) but not ready"
        return 1
    fi
    if prom_answers "$PROMETHEUS_PORT"; then
        printf '%-12s %-5s %-16s %s\n' prometheus up "$where" "not started by stack (reused; down leaves it alone)"
        return 0
    fi
    printf '%-12s %-5s %-16s %s\n' prometheus down "$where" "-"
    return 1
}

prom_purge() {
    say "prometheus: deleting $PROM_DIR"
    rm -rf "$PROM_DIR"
}
