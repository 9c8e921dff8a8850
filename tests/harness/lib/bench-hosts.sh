#!/usr/bin/env bash
# Measures tests/harness/host: boot time of one host (N runs, median), of 3 hosts booted in
# parallel, and the time to tear down; after every `down` checks that nothing is left: state
# dir, cgroups, processes, mounts, namespaces.
#   usage: tests/harness/lib/bench-hosts.sh [RUNS=5]
set -euo pipefail
RUNS=${1:-5}
HOST=$(dirname "$(readlink -f "$0")")/../host
export KR_TEST_STATE=${KR_TEST_STATE:-/tmp/kr-bench}
CGROOT=/sys/fs/cgroup/unified; [ -d $CGROOT ] || CGROOT=/sys/fs/cgroup

ms() { echo $(( $(date +%s%N) / 1000000 )); }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2))}'; }
# namespaces of the hosts' PID 1s (mount, pid, cgroup, uts, ipc)
ns_of() { local p; for p in "$@"; do readlink /proc/"$p"/ns/{mnt,pid,cgroup,uts,ipc}; done; }
# processes still in any of the namespaces $NSS (other users of this machine have their own)
in_our_ns() { local f; for f in /proc/[0-9]*/ns/{mnt,pid,cgroup,uts,ipc}; do
  if grep -qxF "$(readlink "$f" 2>/dev/null || echo none)" <<<"$NSS"; then echo "${f%/ns/*}"; fi; done | sort -u; }

# leftovers of hosts named $@: fails loudly if anything remains
check_clean() {
  local name pid bad=0
  for name in "$@"; do
    [ ! -e "$KR_TEST_STATE/hosts/$name" ] || { echo "LEFT: state dir of $name"; bad=1; }
    ! ls -d "$CGROOT"/kr-*-"$name" >/dev/null 2>&1 || { echo "LEFT: cgroup of $name"; bad=1; }
  done
  for pid in $PIDS; do
    case "$(awk '{print $3}' /proc/"$pid"/stat 2>/dev/null)" in ""|Z) ;; *) echo "LEFT: process $pid"; bad=1;; esac
  done
  ! grep -qF "$KR_TEST_STATE" /proc/self/mounts || { echo "LEFT: mounts"; bad=1; }
  local left; left=$(in_our_ns)
  [ -z "$left" ] || { echo "LEFT: processes in the hosts' namespaces: $left"; bad=1; }
  [ $bad = 0 ] || exit 1
}

pids_of() {  # PID1s and unshare pids of the hosts
  local name; for name in "$@"; do cat "$KR_TEST_STATE/hosts/$name/pid" "$KR_TEST_STATE/hosts/$name/unshare.pid"; done
}
pid1s_of() { local name; for name in "$@"; do cat "$KR_TEST_STATE/hosts/$name/pid"; done; }

single=() single_wall=() downs=() par=() par_wall=()
for i in $(seq "$RUNS"); do
  t0=$(ms); "$HOST" up bench1 >/dev/null 2>&1; t1=$(ms)
  single+=("$(. "$KR_TEST_STATE/hosts/bench1/env"; echo "$BOOT_MS")"); single_wall+=($((t1 - t0)))
  PIDS=$(pids_of bench1); NSS=$(ns_of $(pid1s_of bench1))
  t0=$(ms); "$HOST" down bench1; downs+=($(( $(ms) - t0 )))
  check_clean bench1
done
for i in $(seq "$RUNS"); do
  t0=$(ms); "$HOST" up p1 p2 p3 >/dev/null 2>&1; t1=$(ms)
  par+=("$(for n in p1 p2 p3; do (. "$KR_TEST_STATE/hosts/$n/env"; echo "$BOOT_MS"); done | sort -n | tail -1)")
  par_wall+=($((t1 - t0)))
  PIDS=$(pids_of p1 p2 p3); NSS=$(ns_of $(pid1s_of p1 p2 p3))
  "$HOST" down p1 p2 p3
  check_clean p1 p2 p3
done
echo "one host:           boot (until SystemState=running on its bus) median $(printf '%s\n' "${single[@]}" | median) ms [${single[*]}], 'host up' wall median $(printf '%s\n' "${single_wall[@]}" | median) ms"
echo "one host down:      median $(printf '%s\n' "${downs[@]}" | median) ms [${downs[*]}]"
echo "3 hosts, parallel:  slowest boot median $(printf '%s\n' "${par[@]}" | median) ms [${par[*]}], 'host up' wall median $(printf '%s\n' "${par_wall[@]}" | median) ms"
echo "leftovers after every down: none (state dirs, cgroups, processes, mounts, processes in the hosts' namespaces)"
