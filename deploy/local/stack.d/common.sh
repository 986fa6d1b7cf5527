# deploy/local/stack.d/common.sh: what every component of deploy/local/stack
# uses: logging, time, ports, the state-dir lock, processes (detached start,
# stop), apt-get and system services, HTTP probes.
# Sourced by deploy/local/stack (which sets STACK_DIR first); not run on its own.
# shellcheck shell=bash

say() { printf 'stack: %s\n' "$*" >&2; }
die() { printf 'stack: error: %s\n' "$*" >&2; exit 1; }
# may_reuse COMPONENT WHERE: a server this stack did not start answers where ours
# would; `up` reuses it unless HOOKSTREAM_STACK_REUSE=0 (the fault suite, which
# must restart its own servers: a stranger standing in once cost a CI run).
may_reuse() {
    [[ ${HOOKSTREAM_STACK_REUSE:-1} != 0 ]] ||
        die "$1: a server not started from $STACK_DIR answers on $2, and HOOKSTREAM_STACK_REUSE=0 forbids reusing it; stop it or choose another port"
}

# Microseconds since the epoch (bash 5 EPOCHREALTIME; any locale decimal mark).
now_us() { local t=${EPOCHREALTIME/[.,]/}; printf '%s' "$t"; }
# Seconds elapsed since a now_us timestamp, one decimal.
elapsed() {
    local d=$(( $(now_us) - $1 ))
    printf '%d.%d' $(( d / 1000000 )) $(( d / 100000 % 10 ))
}

check_port() {
    if ! [[ $2 =~ ^[0-9]+$ ]] || (( $2 < 1 || $2 > 65535 )); then
        die "$1 must be a TCP port, got '$2'"
    fi
}

# Something accepts TCP connections on 127.0.0.1:$1.
port_open() {
    # shellcheck disable=SC2016  # $1 is expanded by the inner bash
    timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}

# Serialise up/down on one state dir (parallel test workers may all call `up`).
lock_stack_dir() {
    mkdir -p "$STACK_DIR"
    exec 9>"$STACK_DIR/.lock"
    if ! flock -w 300 9; then
        die "another deploy/local/stack is busy with $STACK_DIR for 5 min; giving up"
    fi
}

pid_alive() { [[ $1 =~ ^[0-9]+$ ]] && kill -0 "$1" 2>/dev/null; }

# Command line of a process, arguments joined by spaces ("" if gone).
proc_cmdline() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true; }

# Start "$@" in the background, detached, its output appended to $2. A bash -c
# writes its own pid to $1, then execs the command under that pid: the pid file
# is exact whatever setsid does. setsid+nohup detach it from our session;
# closing fds 0/1/2/8/9 keeps callers' pipes (subprocess.run) and our locks free.
spawn_detached() { # pid_file log command...
    local pid_file=$1 log=$2
    shift 2
    # shellcheck disable=SC2016  # $$/$1/$@ are the inner bash's
    setsid nohup bash -c 'printf "%s\n" "$$" >"$1"; shift; exec "$@"' _ "$pid_file" "$@" \
        </dev/null >>"$log" 2>&1 8>&- 9>&- &
    disown || true
}

# SIGTERM pid $2, wait up to $3 seconds for it to exit, then SIGKILL it (and
# wait up to 5 s more). $1 labels the log line.
stop_pid() { # label pid timeout_s
    local label=$1 pid=$2 timeout_s=$3 i
    kill -TERM "$pid" 2>/dev/null || true
    for (( i = 0; i < timeout_s * 10; i++ )); do pid_alive "$pid" || break; sleep 0.1; done
    if pid_alive "$pid"; then
        say "$label: still running after ${timeout_s}s; SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for (( i = 0; i < 50; i++ )); do pid_alive "$pid" || break; sleep 0.1; done
    fi
}

apt_install() {
    local -a sudo=()
    if (( EUID != 0 )); then
        command -v sudo >/dev/null || die "need root or sudo to apt-get install $*"
        sudo=(sudo)
    fi
    # Arguments starting with '-' are apt-get options; the rest are packages.
    local a
    local -a pkgs=()
    for a in "$@"; do [[ $a == -* ]] || pkgs+=("$a"); done
    command -v apt-get >/dev/null || die "no apt-get: install ${pkgs[*]} with your package manager"
    say "installing ${pkgs[*]} with apt-get (not found on this machine)..."
    local log="$STACK_DIR/apt.log"
    if ! { "${sudo[@]}" apt-get update && DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y "$@"; } \
            >"$log" 2>&1 </dev/null 9>&-; then
        tail -n 30 "$log" >&2
        die "apt-get install ${pkgs[*]} failed (log: $log)"
    fi
}

# A Debian package's maintainer scripts start its system service where they can
# (systemd, or invoke-rc.d without a policy-rc.d that forbids it). Stop service
# $1 (log prefix $2) and keep it from starting at boot. Debian's Prometheus
# packages keep their pid files in /run/prometheus/<service>.pid.
stop_system_service() { # service label
    local svc=$1 label=$2
    local -a sudo=()
    (( EUID == 0 )) || sudo=(sudo)
    if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
        "${sudo[@]}" systemctl disable --now "$svc.service" >/dev/null 2>&1 9>&- || true
    fi
    local pid_file=/run/prometheus/$svc.pid pid
    if [[ -f $pid_file ]] && pid=$(<"$pid_file") && pid_alive "$pid"; then
        say "$label: stopping the system service $svc the package install started (pid $pid)"
        "${sudo[@]}" "/etc/init.d/$svc" stop >/dev/null 2>&1 9>&- ||
            "${sudo[@]}" kill -TERM "$pid" 2>/dev/null || true
    fi
    if command -v update-rc.d >/dev/null && [[ -x /etc/init.d/$svc ]]; then
        "${sudo[@]}" update-rc.d "$svc" disable >/dev/null 2>&1 9>&- || true
    fi
}

# GET http://127.0.0.1:$1$2 answers 2xx (curl if installed, else bash /dev/tcp).
http_ok() {
    if command -v curl >/dev/null; then
        curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$1$2" 2>/dev/null 9>&-
        return
    fi
    local status
    # shellcheck disable=SC2016  # $1/$2 are expanded by the inner bash
    status=$(timeout 3 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" "$2" >&3
        head -n 1 <&3
    ' _ "$1" "$2" 2>/dev/null) || return 1
    [[ $status =~ ^HTTP/1\.[01]\ 2[0-9][0-9] ]]
}
