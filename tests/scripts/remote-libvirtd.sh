#!/bin/sh
# A second libvirtd as a "remote host" for the fleet tests (issue #20): it
# runs with its own virtlogd in a private mount namespace where agentlab's
# files cannot be seen, and is reached only over TCP on 127.0.0.1 as
# qemu+tcp://127.0.0.1:PORT/system. The root namespace's libvirtd and
# virtlogd (which own /run/libvirt there) are left alone.
#
#   remote-libvirtd.sh start DIR [--fresh] [--port N] [--hide PATH]... [--owner PID]
#   remote-libvirtd.sh stop DIR
#   remote-libvirtd.sh status DIR
#   remote-libvirtd.sh exec DIR CMD [ARG]...
#
# DIR holds the harness's state: the host's private /var/lib/libvirt,
# /run/libvirt, /var/log/libvirt, /var/cache/libvirt and /etc/libvirt (a copy
# of the real one without its networks, pools and domains, so that nothing
# autostarts), the config, pid files and logs. It must not lie below a
# hidden PATH. Inside the namespace each --hide PATH (agentlab's state and
# run dirs, the test's temporary dir) is covered by an empty tmpfs. QEMU's
# binaries and firmware stay visible: /usr and /dev are shared.
#
# start prints the URI once the daemon answers on it (and also when it was
# already running); stop kills both daemons and waits for them; status
# prints the URI and exits 0 when it runs, 1 when not; exec runs a command
# inside the namespace (nsenter) to look at the host's side. The host's
# state (volumes, domain status, logs) survives a stop and start, as a real
# host's does across a libvirtd restart; --fresh (when not running) starts
# from nothing. The port is kept too unless --port names another. --port picks
# the TCP port (default: a free one); --owner PID stops the daemons when
# that process ends, so that a test that crashes leaves nothing running.
# Needs root, unshare(1) and nsenter(1) (util-linux).
set -eu

die() {
    echo "remote-libvirtd: $*" >&2
    exit 1
}

[ $# -ge 2 ] || die "usage: $0 start|stop|status|exec DIR [options]"
cmd=$1
dir=$2
shift 2
case "$dir" in
/*) ;;
*) dir=$(pwd)/$dir ;;
esac

alive() { # pidfile
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

uri() {
    echo "qemu+tcp://127.0.0.1:$(cat "$dir/port")/system"
}

answers() {
    virsh -q -c "$(uri)" uri >/dev/null 2>&1
}

stop_one() { # pidfile
    alive "$1" || { rm -f "$1"; return 0; }
    pid=$(cat "$1")
    kill -TERM "$pid" 2>/dev/null || true
    i=0
    while kill -0 "$pid" 2>/dev/null; do
        i=$((i + 1))
        if [ $i -eq 100 ]; then # 10 s
            kill -KILL "$pid" 2>/dev/null || true
        fi
        [ $i -lt 150 ] || die "pid $pid does not end"
        sleep 0.1
    done
    rm -f "$1"
}

stop_all() {
    if alive "$dir/watch.pid"; then
        kill "$(cat "$dir/watch.pid")" 2>/dev/null || true
    fi
    rm -f "$dir/watch.pid"
    stop_one "$dir/libvirtd.pid"
    stop_one "$dir/virtlogd.pid"
}

free_port() {
    python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

case "$cmd" in
start)
    port=
    owner=
    hide=
    fresh=
    while [ $# -gt 0 ]; do
        case "$1" in
        --fresh)
            fresh=1
            shift
            continue
            ;;
        --port) port=$2 ;;
        --owner) owner=$2 ;;
        --hide)
            case "$2" in
            /*) ;;
            *) die "--hide takes an absolute path: $2" ;;
            esac
            case "$dir/" in
            "$2"/*) die "$dir lies below the hidden $2" ;;
            esac
            hide="$hide $2"
            ;;
        *) die "unknown option $1" ;;
        esac
        [ $# -ge 2 ] || die "$1 needs a value"
        shift 2
    done
    if alive "$dir/libvirtd.pid" && answers; then
        uri
        exit 0
    fi
    [ "$(id -u)" = 0 ] || die "needs root (a second system libvirtd)"
    command -v unshare >/dev/null || die "unshare(1) is not installed"
    command -v nsenter >/dev/null || die "nsenter(1) is not installed"
    stop_all
    mkdir -p "$dir"
    if [ -z "$port" ] && [ -z "$fresh" ] && [ -s "$dir/port" ]; then
        port=$(cat "$dir/port")
    fi
    [ -n "$port" ] || port=$(free_port)
    if ss -Hltn "sport = :$port" 2>/dev/null | grep -q .; then
        die "port $port on 127.0.0.1 is taken"
    fi
    echo "$port" >"$dir/port"
    for d in lib run log cache; do
        [ -z "$fresh" ] || rm -rf "${dir:?}/$d"
        mkdir -p "$dir/$d"
    done
    chmod 0755 "$dir/lib" "$dir/run" "$dir/log" "$dir/cache"
    mkdir -p "$dir/lib/images" "$dir/lib/boot" "$dir/log/qemu"
    # the capabilities cache saves seconds of QEMU probing at first use
    [ ! -d /var/cache/libvirt/qemu ] || [ -d "$dir/cache/qemu" ] ||
        cp -a /var/cache/libvirt/qemu "$dir/cache/"
    if [ -n "$fresh" ] || [ ! -d "$dir/etc" ]; then
        rm -rf "${dir:?}/etc"
        cp -a /etc/libvirt "$dir/etc"
        rm -rf "$dir/etc/qemu/networks" "$dir/etc/storage" "$dir/etc/secrets"
        find "$dir/etc/qemu" -maxdepth 1 -name '*.xml' -delete 2>/dev/null || true
        mkdir -p "$dir/etc/qemu/networks/autostart"
    fi
    cat >"$dir/libvirtd.conf" <<EOF
listen_tls = 0
listen_tcp = 1
listen_addr = "127.0.0.1"
tcp_port = "$port"
auth_tcp = "none"
auth_unix_rw = "none"
log_outputs = "3:file:$dir/libvirtd.log"
EOF
    : >"$dir/libvirtd.log"
    # unshare's child sets up the namespace and starts both daemons, which
    # keep it alive after the shell exits; propagation private: none of
    # these mounts reaches the root namespace
    # shellcheck disable=SC2016 # expanded by the inner shell
    AL_RL_DIR=$dir AL_RL_HIDE=$hide unshare -m --propagation private sh -eu -c '
        d=$AL_RL_DIR
        mount --bind "$d/etc" /etc/libvirt
        mount --bind "$d/lib" /var/lib/libvirt
        mount --bind "$d/run" /run/libvirt
        mount --bind "$d/log" /var/log/libvirt
        mount --bind "$d/cache" /var/cache/libvirt
        for h in $AL_RL_HIDE; do
            mkdir -p "$h"
            mount -t tmpfs -o mode=0755,size=64m agentlab-hidden "$h"
        done
        virtlogd -d -p "$d/virtlogd.pid"
        libvirtd -d -l -f "$d/libvirtd.conf" -p "$d/libvirtd.pid"
    ' || die "starting the daemons failed; see $dir/libvirtd.log"
    i=0
    until answers; do
        i=$((i + 1))
        if [ $i -ge 300 ] || ! alive "$dir/libvirtd.pid"; then
            tail -n 20 "$dir/libvirtd.log" >&2 || true
            stop_all
            die "libvirtd does not answer on $(uri)"
        fi
        sleep 0.1
    done
    if [ -n "$owner" ]; then
        # detached from the caller's stdout, so that a $(...) around start
        # does not wait for it
        # shellcheck disable=SC2016 # expanded by the inner shell
        setsid sh -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done
            exec "$2" stop "$3"' watch "$owner" "$0" "$dir" \
            </dev/null >>"$dir/watch.log" 2>&1 &
        echo $! >"$dir/watch.pid"
    fi
    uri
    ;;
stop)
    [ $# -eq 0 ] || die "stop takes no options"
    [ -d "$dir" ] || exit 0
    # the watcher's own stop must not kill the watcher (itself) first
    if [ -s "$dir/watch.pid" ] && [ "$(cat "$dir/watch.pid")" = "$$" ]; then
        rm -f "$dir/watch.pid"
    fi
    stop_all
    ;;
status)
    if alive "$dir/libvirtd.pid" && answers; then
        uri
        exit 0
    fi
    echo "not running" >&2
    exit 1
    ;;
exec)
    [ $# -ge 1 ] || die "exec needs a command"
    alive "$dir/libvirtd.pid" || die "not running"
    exec nsenter -t "$(cat "$dir/libvirtd.pid")" -m -- "$@"
    ;;
*)
    die "unknown command $cmd (start|stop|status|exec)"
    ;;
esac
