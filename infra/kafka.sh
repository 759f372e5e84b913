#!/usr/bin/env bash
# Apache Kafka (KRaft) on loopback for tests and benchmarks: one node, or a cluster of several.
#
#   infra/kafka.sh install
#   infra/kafka.sh start  [--dir DIR] [--port N] [--controller-port N]   # prints 127.0.0.1:PORT
#   infra/kafka.sh stop   [--dir DIR]      # SIGTERM, up to 30 s, then SIGKILL
#   infra/kafka.sh kill   [--dir DIR]      # SIGKILL now (crash simulation)
#   infra/kafka.sh status [--dir DIR]      # exit 0 when running, prints the address
#
# Cluster mode (what a pilot runs: three brokers, replication 3, min.insync.replicas 2):
#   infra/kafka.sh start  --dir DIR --nodes 3 [--port N | --ports P1,P2,P3] [--controller-ports C1,C2,C3]
#                                          # prints 127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3
#   infra/kafka.sh start  --dir DIR [--node N]   # the whole cluster again, or only node N (after a kill)
#   infra/kafka.sh stop   --dir DIR [--node N]   # every node at once (SIGTERM, 30 s, SIGKILL), or node N
#   infra/kafka.sh kill   --dir DIR [--node N]   # SIGKILL every node, or node N (a broker crash)
#   infra/kafka.sh status --dir DIR [--node N]   # exit 0 all nodes run, 3 some do, 1 none; prints the
#                                                # bootstrap list (with --node: exit 0 when it runs, its address)
#   Each node is a combined broker+controller (node.id N, a KRaft quorum of all nodes) in DIR/nodeN with
#   the single node's layout; DIR/cluster.conf records the node count and ports for the later commands
#   (which need only --dir), DIR/cluster.id the cluster's id, DIR/address the bootstrap list. Ports:
#   --ports, else --port (default 9092) + 2*(i-1) for node i; controller ports: --controller-ports, else
#   each node's port + 1.
#   Topics: default.replication.factor and the internal topics' replication factor min(nodes, 3),
#   min.insync.replicas (and the transaction log's min ISR) one less (at least 1).
#
# install: the broker's jars come from Maven Central through infra/kafka/pom.xml into
#   $CAMI_CACHE/kafka-$KAFKA_VERSION/libs (skipped when done for the same pom).
# DIR holds everything of one broker: server.properties, log4j2.properties, cluster.id, data/ (the
#   log segments), logs/server.log (broker log), kafka.out (JVM stdout/stderr), kafka.pid, address.
#   Starting again on an existing DIR reuses its data.
# Environment: CAMI_CACHE (default ~/.cache/cami), CAMI_KAFKA_JAVA_OPTS (default "-Xms256m -Xmx1g";
#   "-Xms128m -Xmx512m" for each node of a cluster), CAMI_KAFKA_START_TIMEOUT (default 60 s; 120 s for a
#   cluster), CAMI_VERBOSE=1 for more logging.
set -euo pipefail

# shellcheck source=infra/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KAFKA_VERSION="4.1.1"
KAFKA_HOME="$CAMI_CACHE/kafka-$KAFKA_VERSION"
KAFKA_LIBS="$KAFKA_HOME/libs"
KAFKA_STAMP="$KAFKA_HOME/.installed"
KAFKA_POM="$INFRA_DIR/kafka/pom.xml"
KAFKA_START_TIMEOUT="${CAMI_KAFKA_START_TIMEOUT:-60}"
KAFKA_STOP_TIMEOUT=30

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
    exit 2
}

pom_digest() { sha256sum "$KAFKA_POM" | cut -d' ' -f1; }

is_installed() {
    [[ -f "$KAFKA_STAMP" ]] && [[ "$(cat "$KAFKA_STAMP")" == "$(pom_digest)" ]] &&
        [[ -f "$KAFKA_LIBS/kafka_2.13-$KAFKA_VERSION.jar" ]]
}

do_install() {
    if is_installed; then
        debug "Kafka $KAFKA_VERSION already installed in $KAFKA_HOME"
        return 0
    fi
    require_cmd mvn java sha256sum
    log "installing Apache Kafka $KAFKA_VERSION jars into $KAFKA_LIBS (Maven)"
    local staging="$KAFKA_HOME/libs.staging.$$"
    local mvn_log="$KAFKA_HOME/mvn.log"
    rm -rf "$staging"
    mkdir -p "$staging"
    if ! mvn -B -q -f "$KAFKA_POM" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$staging" >"$mvn_log" 2>&1; then
        show_log_tail 40 "$mvn_log"
        rm -rf "$staging"
        die "mvn dependency:copy-dependencies failed (full output: $mvn_log)"
    fi
    [[ -f "$staging/kafka_2.13-$KAFKA_VERSION.jar" ]] || die "kafka_2.13-$KAFKA_VERSION.jar missing after mvn"
    if compgen -G "$staging/slf4j-api-1.*.jar" >/dev/null; then
        die "slf4j-api 1.x on the class path; the broker would log nothing (check $KAFKA_POM)"
    fi
    rm -rf "$KAFKA_LIBS"
    mv "$staging" "$KAFKA_LIBS"
    pom_digest >"$KAFKA_STAMP"
    debug "installed $(find "$KAFKA_LIBS" -name '*.jar' | wc -l) jars"
}

cmd_install() {
    mkdir -p "$KAFKA_HOME"
    with_lock "$CAMI_CACHE/.kafka-install.lock" do_install
}

# ---- options shared by start/stop/kill/status ------------------------------------------------

DIR="$CAMI_CACHE/run/kafka"
PORT=9092
PORT_GIVEN=""
CONTROLLER_PORT=""
NODES=""            # --nodes: the cluster's size (start)
NODE=""             # --node: one node of a cluster
PORTS=""            # --ports P1,P2,...: the cluster's broker ports
CONTROLLER_PORTS="" # --controller-ports C1,C2,...
CLUSTER=""          # set when DIR is (or becomes) a cluster
# What the node being worked on uses; a single broker is node 1 in DIR itself.
NODE_DIR=""
NODE_ID=1
VOTERS=""
REPLICATION=1
MIN_ISR=1

parse_opts() {
    while (($#)); do
        case "$1" in
        --dir) DIR="${2:?--dir needs a value}"; shift 2 ;;
        --dir=*) DIR="${1#*=}"; shift ;;
        --port) PORT="${2:?--port needs a value}"; PORT_GIVEN=1; shift 2 ;;
        --port=*) PORT="${1#*=}"; PORT_GIVEN=1; shift ;;
        --controller-port) CONTROLLER_PORT="${2:?--controller-port needs a value}"; shift 2 ;;
        --controller-port=*) CONTROLLER_PORT="${1#*=}"; shift ;;
        --nodes) NODES="${2:?--nodes needs a value}"; shift 2 ;;
        --nodes=*) NODES="${1#*=}"; shift ;;
        --node) NODE="${2:?--node needs a value}"; shift 2 ;;
        --node=*) NODE="${1#*=}"; shift ;;
        --ports) PORTS="${2:?--ports needs a value}"; shift 2 ;;
        --ports=*) PORTS="${1#*=}"; shift ;;
        --controller-ports) CONTROLLER_PORTS="${2:?--controller-ports needs a value}"; shift 2 ;;
        --controller-ports=*) CONTROLLER_PORTS="${1#*=}"; shift ;;
        -h | --help) usage ;;
        *) die "unknown option '$1' (see: $0 --help)" ;;
        esac
    done
    if [[ -n "$NODES$NODE$PORTS$CONTROLLER_PORTS" ]] || [[ -f "$(abs_dir "$DIR")/cluster.conf" ]]; then
        parse_cluster_opts
        return 0
    fi
    CONTROLLER_PORT="${CONTROLLER_PORT:-$((PORT + 1))}"
    is_port_number "$PORT" || die "--port must be a TCP port, got '$PORT'"
    is_port_number "$CONTROLLER_PORT" || die "--controller-port must be a TCP port, got '$CONTROLLER_PORT'"
    [[ "$PORT" != "$CONTROLLER_PORT" ]] || die "--port and --controller-port must differ"
    DIR="$(abs_dir "$DIR")"
    NODE_DIR="$DIR"
    VOTERS="1@127.0.0.1:$CONTROLLER_PORT"
    PID_FILE="$DIR/kafka.pid"
    # Every broker's command line contains its own server.properties path: that identifies our process.
    PID_MARKER="$DIR/server.properties"
}

# ---- cluster mode: DIR/cluster.conf, DIR/node1..N ----------------------------------------------

BROKER_PORTS=()
CTRL_PORTS=()

# "a,b,c" -> the array named $2, each a TCP port
split_ports() { # LIST ARRAY_NAME OPTION
    local -n ports_ref="$2"
    local p
    IFS=',' read -r -a ports_ref <<<"$1"
    for p in "${ports_ref[@]}"; do
        is_port_number "$p" || die "$3 must be TCP ports separated by commas, got '$1'"
    done
}

read_cluster_conf() { # FILE: sets STORED_NODES, STORED_PORTS, STORED_CONTROLLER_PORTS
    local key value
    STORED_NODES="" STORED_PORTS="" STORED_CONTROLLER_PORTS=""
    while IFS='=' read -r key value; do
        case "$key" in
        nodes) STORED_NODES="$value" ;;
        ports) STORED_PORTS="$value" ;;
        controller_ports) STORED_CONTROLLER_PORTS="$value" ;;
        esac
    done <"$1"
    [[ "$STORED_NODES" =~ ^[1-9]$ && -n "$STORED_PORTS" && -n "$STORED_CONTROLLER_PORTS" ]] ||
        die "$1 is damaged (expected nodes=, ports=, controller_ports=)"
}

parse_cluster_opts() {
    CLUSTER=1
    [[ -z "$CONTROLLER_PORT" ]] || die "--controller-port is for a single broker; a cluster takes --controller-ports"
    [[ -z "$NODES" || "$NODES" =~ ^[1-9]$ ]] || die "--nodes must be 1-9, got '$NODES'"
    DIR="$(abs_dir "$DIR")"
    CLUSTER_CONF="$DIR/cluster.conf"
    if [[ -f "$CLUSTER_CONF" ]]; then
        read_cluster_conf "$CLUSTER_CONF"
        [[ -z "$NODES" || "$NODES" == "$STORED_NODES" ]] ||
            die "$DIR holds a cluster of $STORED_NODES node(s), not $NODES (use another --dir)"
        [[ -z "$PORTS" || "$PORTS" == "$STORED_PORTS" ]] ||
            die "$DIR holds a cluster on ports $STORED_PORTS, not $PORTS (use another --dir)"
        [[ -z "$CONTROLLER_PORTS" || "$CONTROLLER_PORTS" == "$STORED_CONTROLLER_PORTS" ]] ||
            die "$DIR holds a cluster on controller ports $STORED_CONTROLLER_PORTS, not $CONTROLLER_PORTS"
        [[ -z "$PORT_GIVEN" || "$PORT" == "${STORED_PORTS%%,*}" ]] ||
            die "$DIR holds a cluster on ports $STORED_PORTS, not from $PORT (use another --dir)"
        NODES="$STORED_NODES" PORTS="$STORED_PORTS" CONTROLLER_PORTS="$STORED_CONTROLLER_PORTS"
    else
        [[ ! -f "$DIR/server.properties" ]] || die "$DIR holds a single broker, not a cluster (use another --dir)"
        [[ -n "$NODES" ]] || die "$DIR holds no cluster yet; start one with --nodes N"
    fi
    local i
    if [[ -n "$PORTS" ]]; then
        split_ports "$PORTS" BROKER_PORTS --ports
    else
        is_port_number "$PORT" || die "--port must be a TCP port, got '$PORT'"
        BROKER_PORTS=()
        for ((i = 0; i < NODES; i++)); do BROKER_PORTS+=("$((PORT + 2 * i))"); done
    fi
    if [[ -n "$CONTROLLER_PORTS" ]]; then
        split_ports "$CONTROLLER_PORTS" CTRL_PORTS --controller-ports
    else
        CTRL_PORTS=()
        for i in "${BROKER_PORTS[@]}"; do CTRL_PORTS+=("$((i + 1))"); done
    fi
    ((${#BROKER_PORTS[@]} == NODES)) || die "--ports names ${#BROKER_PORTS[@]} port(s) for $NODES node(s)"
    ((${#CTRL_PORTS[@]} == NODES)) || die "--controller-ports names ${#CTRL_PORTS[@]} port(s) for $NODES node(s)"
    for i in "${BROKER_PORTS[@]}" "${CTRL_PORTS[@]}"; do
        is_port_number "$i" || die "port $i out of range"
    done
    local all
    all="$(printf '%s\n' "${BROKER_PORTS[@]}" "${CTRL_PORTS[@]}")"
    [[ "$(sort -u <<<"$all" | wc -l)" == "$((2 * NODES))" ]] || die "the cluster's ports must all differ ($(paste -sd' ' <<<"$all"))"
    if [[ -n "$NODE" ]]; then
        if ! [[ "$NODE" =~ ^[1-9]$ ]] || ((NODE > NODES)); then
            die "--node must be 1-$NODES, got '$NODE'"
        fi
    fi
    PORTS="$(IFS=','; echo "${BROKER_PORTS[*]}")"
    CONTROLLER_PORTS="$(IFS=','; echo "${CTRL_PORTS[*]}")"
    VOTERS=""
    for ((i = 1; i <= NODES; i++)); do
        VOTERS+="${VOTERS:+,}$i@127.0.0.1:${CTRL_PORTS[i - 1]}"
    done
    REPLICATION=$((NODES < 3 ? NODES : 3))
    MIN_ISR=$((REPLICATION > 1 ? REPLICATION - 1 : 1))
}

# Make node N the one the single-broker functions work on.
select_node() { # N
    NODE_ID="$1"
    NODE_DIR="$DIR/node$1"
    PORT="${BROKER_PORTS[$1 - 1]}"
    CONTROLLER_PORT="${CTRL_PORTS[$1 - 1]}"
    PID_FILE="$NODE_DIR/kafka.pid"
    PID_MARKER="$NODE_DIR/server.properties"
}

bootstrap_list() {
    local p out=""
    for p in "${BROKER_PORTS[@]}"; do out+="${out:+,}127.0.0.1:$p"; done
    printf '%s\n' "$out"
}

write_cluster_conf() {
    [[ -f "$CLUSTER_CONF" ]] && return 0
    printf '# Generated by infra/kafka.sh start --nodes; read by every later command on this DIR.\nnodes=%s\nports=%s\ncontroller_ports=%s\n' \
        "$NODES" "$PORTS" "$CONTROLLER_PORTS" >"$CLUSTER_CONF.tmp"
    mv -f "$CLUSTER_CONF.tmp" "$CLUSTER_CONF"
}

write_config() {
    cat >"$NODE_DIR/server.properties" <<EOF
# Generated by infra/kafka.sh; rewritten on every start.
process.roles=broker,controller
node.id=$NODE_ID
controller.quorum.voters=$VOTERS
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
log.dirs=$NODE_DIR/data
num.partitions=6
auto.create.topics.enable=false
offsets.topic.replication.factor=$REPLICATION
transaction.state.log.replication.factor=$REPLICATION
transaction.state.log.min.isr=$MIN_ISR
share.coordinator.state.topic.replication.factor=$REPLICATION
share.coordinator.state.topic.min.isr=$MIN_ISR
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000
# After a crash the restarted controller keeps the dead broker's registration until its session
# expires (default 9 s) and refuses the new one meanwhile; a short session makes restarts fast.
broker.heartbeat.interval.ms=500
broker.session.timeout.ms=3000
EOF
    if [[ -n "$CLUSTER" ]]; then
        cat >>"$NODE_DIR/server.properties" <<EOF
# A cluster: every partition on $REPLICATION brokers, an append acknowledged once $MIN_ISR hold it
# (acks=all), so one broker may be lost without losing or refusing anything.
default.replication.factor=$REPLICATION
min.insync.replicas=$MIN_ISR
unclean.leader.election.enable=false
EOF
    fi
    cat >"$NODE_DIR/log4j2.properties" <<EOF
# Generated by infra/kafka.sh: broker log to a file in the data dir, nothing on stdout.
name = cami-kafka
status = warn
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = $NODE_DIR/logs/server.log
appender.file.filePattern = $NODE_DIR/logs/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 50MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka-request.name = kafka.request.logger
logger.kafka-request.level = WARN
logger.request-channel.name = kafka.network.RequestChannel\$
logger.request-channel.level = WARN
EOF
}

java_cmd() {
    local opts default="-Xms256m -Xmx1g"
    [[ -z "$CLUSTER" ]] || default="-Xms128m -Xmx512m"
    read -r -a opts <<<"${CAMI_KAFKA_JAVA_OPTS:-$default}"
    printf '%s\0' java "${opts[@]}" -XX:+UseG1GC -Djava.awt.headless=true \
        "-Dlog4j2.configurationFile=$NODE_DIR/log4j2.properties" "-Dkafka.logs.dir=$NODE_DIR/logs" \
        -cp "$KAFKA_LIBS/*"
}

# The cluster's id is DIR/cluster.id (every node of a cluster formats its storage with the same one).
format_storage() {
    if [[ -f "$NODE_DIR/data/meta.properties" ]]; then
        debug "storage in $NODE_DIR/data already formatted"
        return 0
    fi
    local cluster_id cmd=()
    mapfile -d '' cmd < <(java_cmd)
    if [[ -s "$DIR/cluster.id" ]]; then
        cluster_id="$(cat "$DIR/cluster.id")"
    else
        cluster_id="$("${cmd[@]}" kafka.tools.StorageTool random-uuid 2>>"$NODE_DIR/kafka.out" | tail -n 1)"
        [[ -n "$cluster_id" ]] || die "StorageTool random-uuid printed nothing (see $NODE_DIR/kafka.out)"
        printf '%s\n' "$cluster_id" >"$DIR/cluster.id"
    fi
    if ! "${cmd[@]}" kafka.tools.StorageTool format -t "$cluster_id" -c "$NODE_DIR/server.properties" \
        >>"$NODE_DIR/kafka.out" 2>&1; then
        show_log_tail 30 "$NODE_DIR/kafka.out"
        die "formatting Kafka storage in $NODE_DIR/data failed"
    fi
}

# True when the broker at BOOTSTRAP answers metadata requests listing a broker, and every NODE_ID
# given among them (confluent_kafka if importable).
broker_ready() { # BOOTSTRAP [NODE_ID...]
    python3 - "$@" <<'EOF' 2>/dev/null
import sys
try:
    from confluent_kafka.admin import AdminClient
except ImportError:
    sys.exit(0)  # port check already passed; nothing better available
admin = AdminClient({"bootstrap.servers": sys.argv[1], "socket.timeout.ms": 3000})
md = admin.list_topics(timeout=3)
sys.exit(0 if md.brokers and {int(n) for n in sys.argv[2:]} <= set(md.brokers) else 1)
EOF
}

fail_start() { abort_start "${1:-}" "$2" "$NODE_DIR/logs/server.log" "$NODE_DIR/kafka.out"; }

# Write the node's configuration, format its storage (once) and start its JVM, detached.
spawn_node() {
    if port_open 127.0.0.1 "$PORT"; then
        die "port $PORT is already in use by another process"
    fi
    if port_open 127.0.0.1 "$CONTROLLER_PORT"; then
        die "controller port $CONTROLLER_PORT is already in use by another process"
    fi
    mkdir -p "$NODE_DIR/data" "$NODE_DIR/logs"
    write_config
    format_storage
    local cmd=()
    mapfile -d '' cmd < <(java_cmd)
    printf '\n===== start %s =====\n' "$(date -Is)" >>"$NODE_DIR/kafka.out"
    spawn_detached "$PID_FILE" "$NODE_DIR/kafka.out" "${cmd[@]}" kafka.Kafka "$NODE_DIR/server.properties"
}

cmd_start() {
    parse_opts "$@"
    is_installed || die "Kafka $KAFKA_VERSION is not installed; run: bash $INFRA_DIR/kafka.sh install"
    require_cmd java python3 setsid
    if [[ -n "$CLUSTER" ]]; then
        cluster_start
        return 0
    fi
    local pid
    if pid="$(read_live_pid "$PID_FILE" "$PID_MARKER")"; then
        debug "already running (pid $pid)"
        cat "$DIR/address"
        return 0
    fi
    spawn_node
    pid="$(cat "$PID_FILE")"
    local deadline=$((SECONDS + KAFKA_START_TIMEOUT))
    until port_open 127.0.0.1 "$PORT" && broker_ready "127.0.0.1:$PORT"; do
        pid_alive "$pid" || fail_start "" "broker exited during start-up (pid $pid)"
        ((SECONDS < deadline)) || fail_start "$pid" "broker not ready on 127.0.0.1:$PORT after ${KAFKA_START_TIMEOUT}s"
        sleep 0.5
    done
    printf '127.0.0.1:%s\n' "$PORT" >"$DIR/address"
    cat "$DIR/address"
}

# Start the nodes that are not running (all of them, or --node N), then wait until each answers
# listing itself and, for the whole cluster, until every node is in the metadata.
cluster_start() {
    local n pid wanted=() started=() ids=()
    if [[ -n "$NODE" ]]; then wanted=("$NODE"); else for ((n = 1; n <= NODES; n++)); do wanted+=("$n"); done; fi
    local to_start=()
    for n in "${wanted[@]}"; do
        select_node "$n"
        if pid="$(read_live_pid "$PID_FILE" "$PID_MARKER")"; then
            debug "node $n already running (pid $pid)"
            continue
        fi
        # every port checked before any node starts, so a busy one leaves nothing half-started
        ! port_open 127.0.0.1 "$PORT" || die "port $PORT (node $n) is already in use by another process"
        ! port_open 127.0.0.1 "$CONTROLLER_PORT" ||
            die "controller port $CONTROLLER_PORT (node $n) is already in use by another process"
        to_start+=("$n")
    done
    ((${#to_start[@]} == 0)) || write_cluster_conf
    for n in "${to_start[@]}"; do
        select_node "$n"
        spawn_node
        started+=("$n")
    done
    bootstrap_list >"$DIR/address"
    local timeout="${CAMI_KAFKA_START_TIMEOUT:-120}"
    local deadline=$((SECONDS + timeout))
    for n in "${started[@]}"; do
        select_node "$n"
        pid="$(cat "$PID_FILE")"
        until port_open 127.0.0.1 "$PORT" && broker_ready "127.0.0.1:$PORT" "$n"; do
            pid_alive "$pid" || cluster_fail_start "$n" "node $n exited during start-up (pid $pid)" "${started[@]}"
            ((SECONDS < deadline)) ||
                cluster_fail_start "$n" "node $n not ready on 127.0.0.1:$PORT after ${timeout}s" "${started[@]}"
            sleep 0.5
        done
        printf '127.0.0.1:%s\n' "$PORT" >"$NODE_DIR/address"
    done
    if [[ -z "$NODE" ]]; then
        for ((n = 1; n <= NODES; n++)); do ids+=("$n"); done
        until broker_ready "$(bootstrap_list)" "${ids[@]}"; do
            ((SECONDS < deadline)) ||
                cluster_fail_start 1 "not every node is in the cluster's metadata after ${timeout}s" "${started[@]}"
            sleep 0.5
        done
        cat "$DIR/address"
    else
        cat "$DIR/node$NODE/address"
    fi
}

cluster_fail_start() { # FAILED_NODE MESSAGE STARTED_NODE...
    local failed="$1" message="$2" n pid
    shift 2
    select_node "$failed"
    show_log_tail 40 "$NODE_DIR/logs/server.log" "$NODE_DIR/kafka.out"
    for n in "$@"; do
        select_node "$n"
        if pid="$(read_live_pid "$PID_FILE" "$PID_MARKER")"; then
            kill -KILL "$pid" 2>/dev/null || true
            wait_pid_gone "$pid" 10 || true
        fi
        rm -f "$PID_FILE"
    done
    die "$message"
}

# Run "ACTION PID_FILE MARKER [ARGS]" for node --node N, or for every node at once (a graceful stop of
# the nodes one after another would leave the last ones without a quorum, waiting for it).
each_node() { # ACTION [ARGS...]
    local action="$1" n jobs=() failed=0 job
    shift
    if [[ -n "$NODE" ]]; then
        select_node "$NODE"
        "$action" "$PID_FILE" "$PID_MARKER" "$@"
        return
    fi
    for ((n = 1; n <= NODES; n++)); do
        select_node "$n"
        "$action" "$PID_FILE" "$PID_MARKER" "$@" &
        jobs+=("$!")
    done
    for job in "${jobs[@]}"; do wait "$job" || failed=1; done
    ((failed == 0)) || die "not every node stopped"
}

cmd_stop() {
    parse_opts "$@"
    if [[ -n "$CLUSTER" ]]; then
        each_node stop_pid_file "$KAFKA_STOP_TIMEOUT"
        return
    fi
    stop_pid_file "$PID_FILE" "$PID_MARKER" "$KAFKA_STOP_TIMEOUT"
}

cmd_kill() {
    parse_opts "$@"
    if [[ -n "$CLUSTER" ]]; then
        each_node kill_pid_file
        return
    fi
    kill_pid_file "$PID_FILE" "$PID_MARKER"
}

cmd_status() {
    parse_opts "$@"
    if [[ -z "$CLUSTER" ]]; then
        server_status "$PID_FILE" "$PID_MARKER" "$DIR/address"
        return
    fi
    if [[ -n "$NODE" ]]; then
        select_node "$NODE"
        server_status "$PID_FILE" "$PID_MARKER" "$NODE_DIR/address"
        return
    fi
    local n running=0 down=()
    for ((n = 1; n <= NODES; n++)); do
        select_node "$n"
        if read_live_pid "$PID_FILE" "$PID_MARKER" >/dev/null; then
            running=$((running + 1))
        else
            down+=("node $n (127.0.0.1:$PORT)")
        fi
    done
    ((running > 0)) || { debug "no node running"; return 1; }
    bootstrap_list
    ((${#down[@]} == 0)) && return 0
    local listed
    listed="$(printf '%s, ' "${down[@]}")"
    log "degraded: $running of $NODES node(s) running; not running: ${listed%, }"
    return 3
}

dispatch "install start stop kill status" "$@"
