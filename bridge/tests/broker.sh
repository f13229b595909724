#!/usr/bin/env bash
# A private RabbitMQ for the bridge's tests: bound to 127.0.0.1 only, its own
# node name, ports, data and log directories under DIR, so that it clashes
# with no other broker on the machine. Installs the Debian package
# `rabbitmq-server` if it is missing (as root), and fails loudly if it cannot.
#
#   broker.sh start DIR PORT [PASS]
#                              start (data kept in DIR), wait until it serves
#                              AMQP on 127.0.0.1:PORT; pids in DIR/*.pid; the
#                              user `bridge` has password PASS (default
#                              `bridge`)
#   broker.sh restart DIR PORT kill -9 the broker (not epmd) and start it again
#                              on the same data
#   broker.sh stop DIR         stop the broker and its epmd, by pid
set -euo pipefail

cmd=${1:?usage: broker.sh start|restart|stop DIR [PORT]}
dir=${2:?DIR}
RMQ=/usr/lib/rabbitmq/bin

ensure_installed() {
    [ -x "$RMQ/rabbitmq-server" ] && return 0
    if [ "$(id -u)" != 0 ]; then
        echo "broker.sh: rabbitmq-server is not installed and this is not root: cannot install it" >&2
        exit 1
    fi
    echo "broker.sh: installing rabbitmq-server" >&2
    (
        flock 9
        if [ ! -x "$RMQ/rabbitmq-server" ]; then
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
        fi
    ) 9>/tmp/shmq-bridge-broker-install.lock
    # The package may start its own service: it is not ours to use, and it
    # would hold port 5672 and epmd's 4369 on every interface.
    if command -v service >/dev/null; then service rabbitmq-server stop >/dev/null 2>&1 || true; fi
    [ -x "$RMQ/rabbitmq-server" ] || { echo "broker.sh: rabbitmq-server still missing after apt-get" >&2; exit 1; }
}

env_for() {
    local port=$1
    export HOME="$dir/home"
    export RABBITMQ_NODENAME="shmqbridge$port@localhost"
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT=$port
    export RABBITMQ_DIST_PORT=$((port + 10000))
    export ERL_EPMD_ADDRESS=127.0.0.1
    export ERL_EPMD_PORT=$((port + 1))
    export RABBITMQ_MNESIA_BASE="$dir/mnesia"
    export RABBITMQ_LOG_BASE="$dir/log"
    export RABBITMQ_CONFIG_FILE="$dir/rabbitmq"          # .conf appended
    export RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config"
    export RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
    export RABBITMQ_PLUGINS_EXPAND_DIR="$dir/plugins-expand"
    export RABBITMQ_PID_FILE="$dir/rabbit.pid-by-rabbit"
    # Erlang distribution on the loopback only, like AMQP.
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
}

wait_port() {
    local port=$1 pid=$2
    for _ in $(seq 1 600); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "broker.sh: the broker exited while starting; its log:" >&2
            tail -n 40 "$dir/log/"*.log "$dir/stdout" >&2 2>/dev/null || true
            exit 1
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "broker.sh: no AMQP on 127.0.0.1:$port after 60 s" >&2
    exit 1
}

start_broker() {
    local port=$1
    env_for "$port"
    nohup "$RMQ/rabbitmq-server" >>"$dir/stdout" 2>&1 </dev/null &
    echo $! >"$dir/wrapper.pid"
    rm -f "$RABBITMQ_PID_FILE"
    wait_port "$port" "$(cat "$dir/wrapper.pid")"
    # The Erlang VM is the wrapper script's child; it writes its own pid.
    for _ in $(seq 1 100); do [ -s "$RABBITMQ_PID_FILE" ] && break; sleep 0.1; done
    cp "$RABBITMQ_PID_FILE" "$dir/broker.pid"
}

case $cmd in
start)
    port=${3:?PORT}
    ensure_installed
    mkdir -p "$dir/home" "$dir/mnesia" "$dir/log"
    pass=${4:-bridge}
    printf 'listeners.tcp.default = 127.0.0.1:%s\nloopback_users = none\ndefault_user = bridge\ndefault_pass = %s\n' \
        "$port" "$pass" >"$dir/rabbitmq.conf"
    echo '[].' >"$dir/enabled_plugins"
    echo '[].' >"$dir/advanced.config"
    : >"$dir/rabbitmq-env.conf"
    [ -f "$dir/home/.erlang.cookie" ] || { head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/home/.erlang.cookie"; chmod 400 "$dir/home/.erlang.cookie"; }
    env_for "$port"
    nohup epmd -port "$ERL_EPMD_PORT" -address 127.0.0.1 >>"$dir/epmd.out" 2>&1 </dev/null &
    echo $! >"$dir/epmd.pid"
    start_broker "$port"
    ;;
restart)
    port=${3:?PORT}
    for f in broker wrapper; do
        pid=$(cat "$dir/$f.pid")
        kill -9 "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    done
    start_broker "$port"
    ;;
stop)
    for f in broker wrapper epmd; do
        if [ -f "$dir/$f.pid" ]; then
            pid=$(cat "$dir/$f.pid")
            kill -9 "$pid" 2>/dev/null || true
            rm -f "$dir/$f.pid"
        fi
    done
    ;;
*)
    echo "usage: broker.sh start|restart|stop DIR [PORT]" >&2
    exit 2
    ;;
esac
