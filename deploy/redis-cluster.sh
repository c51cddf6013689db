#!/usr/bin/env bash
# A throwaway 3-master Redis Cluster on loopback, for CI and local tests:
#   deploy/redis-cluster.sh start DIR   start it (a no-op when it already answers)
#   deploy/redis-cluster.sh stop DIR    shut its nodes down and drop DIR's node files
# Ports: REDIS_CLUSTER_PORTS (default "7101 7102 7103"). No persistence: a test
# cluster's data is meant to go with it.
set -euo pipefail

cmd=${1:-}
dir=${2:-}
if [[ -z $cmd || -z $dir ]]; then
  echo "usage: $0 start|stop DIR" >&2
  exit 2
fi
read -r -a ports <<<"${REDIS_CLUSTER_PORTS:-7101 7102 7103}"

cluster_ok() {
  redis-cli -h 127.0.0.1 -p "${ports[0]}" cluster info 2>/dev/null | grep -q '^cluster_state:ok'
}

case $cmd in
start)
  if cluster_ok; then
    exit 0
  fi
  mkdir -p "$dir"
  for p in "${ports[@]}"; do
    # a node left running from an earlier, half-made cluster keeps its port
    if ! redis-cli -h 127.0.0.1 -p "$p" ping >/dev/null 2>&1; then
      # a stale nodes file would make the node remember a cluster that is gone
      rm -f "$dir/nodes-$p.conf"
      redis-server --bind 127.0.0.1 --port "$p" --cluster-enabled yes \
        --cluster-config-file "$dir/nodes-$p.conf" --cluster-node-timeout 5000 \
        --save "" --appendonly no --dir "$dir" --logfile "$dir/redis-$p.log" \
        --daemonize yes
    fi
  done
  for p in "${ports[@]}"; do
    for _ in $(seq 1 50); do
      redis-cli -h 127.0.0.1 -p "$p" ping >/dev/null 2>&1 && break
      sleep 0.1
    done
  done
  # slots are assigned only on a fresh cluster; nodes that already know each other
  # just need time to agree
  if ! redis-cli -h 127.0.0.1 -p "${ports[0]}" cluster info 2>/dev/null |
    grep -q '^cluster_slots_assigned:16384'; then
    hosts=()
    for p in "${ports[@]}"; do hosts+=("127.0.0.1:$p"); done
    redis-cli --cluster create "${hosts[@]}" --cluster-replicas 0 --cluster-yes >/dev/null
  fi
  for _ in $(seq 1 100); do
    cluster_ok && exit 0
    sleep 0.2
  done
  echo "redis-cluster: no cluster_state:ok on port ${ports[0]}" >&2
  exit 1
  ;;
stop)
  for p in "${ports[@]}"; do
    redis-cli -h 127.0.0.1 -p "$p" shutdown nosave >/dev/null 2>&1 || true
  done
  rm -f "$dir"/nodes-*.conf
  ;;
*)
  echo "usage: $0 start|stop DIR" >&2
  exit 2
  ;;
esac
