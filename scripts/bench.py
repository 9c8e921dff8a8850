#!/usr/bin/env python3
"""scripts/bench's measuring and arithmetic (standard library only).

  bench.py poll OUT VERSION URL...   poll every URL's /api/status at 20 Hz each until every host
                                      has said "available at VERSION" for 0.5 s (or SIGTERM);
                                      OUT gets, per host, the first moment (wall ms) it did so
  bench.py manual POLL STEPS [TRACE UNITS0 UNITS1]
                                      one run of scripts/rollback-by-hand -> a JSON record
  bench.py tool POLL HISTORY JOURNAL TRIGGER_MS [TRACE UNITS0 UNITS1]
                                      one kibana-rollback run -> a JSON record (step times from
                                      the agents' journals, phase times from `history --json`;
                                      with TRACE the CPU spent in the downtime)
  bench.py cpu-trace OUT PREFIX      the machine's CPU and that of the test hosts named PREFIX*,
                                      every 100 ms into OUT until SIGTERM
  bench.py unit-cpu PREFIX           the CPU those hosts have used so far, by unit (JSON; two of
                                      them, before and after a run, to manual/tool: UNITS0 UNITS1)
  bench.py report RESULTS...         medians of the records, one `name value unit` line each
  bench.py pageout PID               drops process PID's mappings of its own executable from
                                      memory (process_madvise MADV_PAGEOUT): what it maps again
                                      afterwards is the code it runs (the footprint's working set)

scripts/bench-scale's:
  bench.py kibana PORT               a no-op Kibana: /api/status answers `available` at the version
                                      of /usr/share/kibana/package.json as it was at start
  bench.py cpu-mark ES_PID PREFIX    a JSON mark: wall ms, the machine's CPU ticks, load, the CPU of
                                      ES and of the test hosts named PREFIX* (their cgroups)
  bench.py scale-window PREFIX N CLIENTS0 CLIENTS1 CPU0 CPU1
                                      requests/s the agents sent (`_nodes/stats/http` clients whose
                                      user agent is kibana-rollback), CPU and load between marks
  bench.py scale-phases PREFIX N HISTORY JOURNAL
                                      per phase change: to each agent seeing it and to each agent's
                                      acknowledgement landing (p50/p99/max), from the journals
  bench.py scale-report RESULTS      each figure across the sizes on one line (a/b/c)

Downtime is first stop -> last host available at the target; the floor is the slowest stop +
safety snapshot + restore + slowest (install + start until available), from the same run's step
times; overhead = downtime - floor.
"""
import json
import os
import signal
import statistics
import sys
import threading
import time
import urllib.request

HZ = 20


def now_ms():
    return int(time.time() * 1000)


def poll(out, version, urls):
    first_ok = [None] * len(urls)
    ok = [False] * len(urls)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def watch(i, url):
        while not stop.is_set():
            t = now_ms()
            good = False
            try:
                with urllib.request.urlopen(url, timeout=0.5) as r:
                    v = json.loads(r.read())
                    good = (v.get("version", {}).get("number") == version
                            and v["status"]["overall"]["level"] == "available")
            except Exception:
                good = False
            if good and not ok[i]:
                first_ok[i] = t
            ok[i] = good
            time.sleep(max(0.0, 1.0 / HZ - (now_ms() - t) / 1000))

    threads = [threading.Thread(target=watch, args=(i, u), daemon=True) for i, u in enumerate(urls)]
    for th in threads:
        th.start()
    all_since = None
    while not stop.is_set():
        if all(ok):
            all_since = all_since or now_ms()
            if now_ms() - all_since >= 500:
                break
        else:
            all_since = None
        time.sleep(0.05)
    stop.set()
    json.dump({"first_available_ms": first_ok, "all": all(ok)}, open(out, "w"))


def units_delta(before_file, after_file):
    a, b = json.load(open(before_file)), json.load(open(after_file))
    return {k: (v - a.get(k, 0)) / 1e6 for k, v in b.items()}


def manual(poll_file, steps_file, trace_file=None, units0=None, units1=None):
    p = json.load(open(poll_file))
    steps = [l.split() for l in open(steps_file) if l.startswith("step ")]
    by = {}
    for _, name, host, t0, t1 in steps:
        by.setdefault(name, []).append((host, int(t0), int(t1)))
    stops = by["stop"]
    first_stop = min(t0 for _, t0, _ in stops)
    last_up = max(p["first_available_ms"])
    per_host_up = {}
    for name in ("install", "start", "available"):
        for h, t0, t1 in by[name]:
            per_host_up[h] = per_host_up.get(h, 0) + (t1 - t0)
    d = lambda xs: max(t1 - t0 for _, t0, t1 in xs)
    floor = d(stops) + d(by["snapshot"]) + d(by["restore"]) + max(per_host_up.values())
    t_start = min(int(s[3]) for s in steps)
    t_end = max(int(s[4]) for s in steps)
    return {
        "downtime_ms": last_up - first_stop,
        "downtime_cpu": window_cpu(trace_file, first_stop, last_up) if trace_file else None,
        "hosts_cpu_by_unit": units_delta(units0, units1) if units1 else None,
        "total_ms": max(t_end, last_up) - t_start,
        "floor_ms": floor,
        "steps_ms": {
            "stop_max": d(stops),
            "safety_snapshot": d(by["snapshot"]),
            "restore": d(by["restore"]),
            "install_start_max": max(per_host_up.values()),
        },
    }


def parse_wall(at):
    # RFC 3339 UTC with or without milliseconds
    from datetime import datetime, timezone
    at = at.rstrip("Z")
    fmt = "%Y-%m-%dT%H:%M:%S.%f" if "." in at else "%Y-%m-%dT%H:%M:%S"
    return int(datetime.strptime(at, fmt).replace(tzinfo=timezone.utc).timestamp() * 1000)


def tool(poll_file, history_file, journal_file, trigger_ms, trace_file=None, units0=None, units1=None):
    p = json.load(open(poll_file))
    op = json.load(open(history_file))["operations"][0]  # newest first
    phases = op["phases"]
    # The agents' journals: `running host step` / `host step finished` (per host, STEP field),
    # `running cluster step` / `cluster step finished` (the leader).
    host_steps, cluster_steps = {}, {}
    for line in open(journal_file):
        line = line.strip()
        if not line.startswith("{"):
            continue
        e = json.loads(line)
        if e.get("OPERATION_ID") != op["operation"]:
            continue
        msg, step, t = e.get("MESSAGE"), e.get("STEP"), int(e["__REALTIME_TIMESTAMP"]) // 1000
        if isinstance(msg, list):  # the journal's JSON gives non-UTF-8 or long fields as bytes
            msg = bytes(msg).decode("utf-8", "replace")
        msg = msg or ""
        host = e.get("_HOSTNAME")
        if msg.startswith("running host step"):
            host_steps.setdefault((host, step), [t, None])[0] = t
        elif msg.startswith("host step finished"):
            host_steps.setdefault((host, step), [None, t])[1] = t
        elif msg.startswith("running cluster step"):
            cluster_steps.setdefault(step, [t, None])[0] = t
        elif msg.startswith("cluster step finished"):
            cluster_steps.setdefault(step, [None, t])[1] = t
    dur = lambda se: (se[1] - se[0]) if se and None not in se else 0
    hosts = sorted({h for h, _ in host_steps})
    stops = [dur(host_steps.get((h, "StopUnit"))) for h in hosts]
    first_stop = min(v[0] for (h, s), v in host_steps.items() if s == "StopUnit" and v[0])
    up = [dur(host_steps.get((h, "Reinstall"))) + dur(host_steps.get((h, "StartUnit"))) for h in hosts]
    snap, restore = dur(cluster_steps.get("SafetySnapshot")), dur(cluster_steps.get("Restore"))
    last_up = max(p["first_available_ms"])
    done = [parse_wall(c["at"]) for c in phases if c["to"] == "done"]
    phase_ms = {}
    for a, b in zip(phases, phases[1:]):
        if a["to"] != b["to"]:
            phase_ms[a["to"]] = phase_ms.get(a["to"], 0) + parse_wall(b["at"]) - parse_wall(a["at"])
    return {
        "downtime_ms": last_up - first_stop,
        "downtime_cpu": window_cpu(trace_file, first_stop, last_up) if trace_file else None,
        "hosts_cpu_by_unit": units_delta(units0, units1) if units1 else None,
        "total_ms": (done[0] if done else last_up) - trigger_ms,
        "floor_ms": max(stops) + snap + restore + max(up),
        "steps_ms": {
            "stop_max": max(stops),
            "safety_snapshot": snap,
            "restore": restore,
            "install_start_max": max(up),
        },
        "phases_ms": phase_ms,
        "phases": [f'{c["at"]} {c["from"]} -> {c["to"]}' for c in phases],
    }


def report(files):
    runs = {}
    for f in files:
        for line in open(f):
            r = json.loads(line)
            runs.setdefault((r["hosts"], r["how"]), []).append(r)
    med = lambda xs: statistics.median(xs) if xs else float("nan")
    out = []
    for (n, how), rs in sorted(runs.items()):
        p = f"hosts{n}.{how}"
        for k in ("downtime_ms", "total_ms", "floor_ms"):
            out.append((f"{p}.{k[:-3]}", med([r[k] for r in rs]) / 1000, "s"))
        out.append((f"{p}.overhead", med([r["downtime_ms"] - r["floor_ms"] for r in rs]) / 1000, "s"))
        for k in rs[0]["steps_ms"]:
            out.append((f"{p}.step.{k}", med([r["steps_ms"][k] for r in rs]) / 1000, "s"))
        for k in rs[0].get("phases_ms", {}):
            out.append((f"{p}.phase.{k}", med([r["phases_ms"].get(k, 0) for r in rs]) / 1000, "s"))
        cpu = [r["downtime_cpu"] for r in rs if r.get("downtime_cpu")]
        if cpu:
            out.append((f"{p}.downtime_cpu", med([c["machine_core_s"] for c in cpu]), "core-s"))
            out.append((f"{p}.downtime_busy", med([c["machine_busy_pct"] for c in cpu]), "%"))
            if how == "kibana-rollback":  # the script's commands run in the caller's cgroup
                out.append((f"{p}.downtime_hosts_cpu", med([c["hosts_core_s"] for c in cpu]), "core-s"))
        by_unit = [r["hosts_cpu_by_unit"] for r in rs if r.get("hosts_cpu_by_unit")]
        for u in sorted({u for b in by_unit for u in b}):
            v = med([b.get(u, 0) for b in by_unit])
            if v >= 0.05:
                out.append((f"{p}.run_hosts_cpu.{u}", v, "core-s"))
        out.append((f"{p}.runs", len(rs), "runs"))
        if how == "kibana-rollback" and (n, "by-hand") in runs:
            h = runs[(n, "by-hand")]
            out.append((f"hosts{n}.ratio", med([r["downtime_ms"] for r in rs]) / med([r["downtime_ms"] for r in h]), "x"))
            # The best ratio this machine allows: the script's downtime work (core-seconds of
            # the whole machine) spread over every core, against the script's downtime.
            hc = [(r["downtime_cpu"]["machine_core_s"], r["downtime_ms"] / 1000) for r in h if r.get("downtime_cpu")]
            if hc:
                cores = os.cpu_count()
                out.append((f"hosts{n}.ratio_cpu_bound", med([w / cores / d for w, d in hc]), f"x ({cores} cores)"))
    for name, v, unit in out:
        print(f"{name} {v:.3f} {unit}" if isinstance(v, float) else f"{name} {v} {unit}")


def kibana(port):
    import http.server
    version = json.load(open("/usr/share/kibana/package.json"))["version"]
    body = json.dumps({"name": "kibana", "version": {"number": version, "build_snapshot": False},
                       "status": {"overall": {"level": "available", "summary": "no-op Kibana"}}}).encode()

    class Status(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            ok = self.path.split("?")[0] == "/api/status"
            self.send_response(200 if ok else 404)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body) if ok else 0))
            self.end_headers()
            if ok:
                self.wfile.write(body)

        def log_message(self, *_):
            pass

    http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), Status).serve_forever()


def cpu_mark(es_pid, host_prefix=""):
    print(json.dumps(cpu_sample(es_pid, host_prefix)))


def cpu_trace(out, host_prefix):
    """A cpu_sample line every 100 ms into OUT until SIGTERM (the downtime's CPU, afterwards)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with open(out, "w") as f:
        while not stop.is_set():
            f.write(json.dumps(cpu_sample(0, host_prefix)) + "\n")
            f.flush()
            stop.wait(0.1)


def host_cgroups(host_prefix):
    """The cgroups of the test hosts named PREFIX* (cgroup2, or its hybrid mount)."""
    import glob
    return glob.glob(f"/sys/fs/cgroup/unified/kr-*-{host_prefix}*") + glob.glob(f"/sys/fs/cgroup/kr-*-{host_prefix}*")


def cgroup_usec(d):
    """CPU used by cgroup D and everything under it (usec; 0 when gone)."""
    try:
        return int(open(f"{d}/cpu.stat").readline().split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def unit_cpu(host_prefix):
    """CPU (usec) of the test hosts named PREFIX* by what ran it, summed over the hosts: each
    host's system.slice units, its systemd (init.scope) and the rest of its cgroup."""
    import glob
    units = {}
    for host in host_cgroups(host_prefix):
        total, named = cgroup_usec(host), 0
        for d in glob.glob(f"{host}/system.slice/*.service") + [f"{host}/init.scope"]:
            name = os.path.basename(d)
            name = name.split("@")[0] + "@" if "@" in name else name
            u = cgroup_usec(d)
            units[name] = units.get(name, 0) + u
            named += u
        units["other"] = units.get("other", 0) + total - named
    return units


def window_cpu(trace_file, t0, t1):
    """The machine's and the test hosts' CPU between wall ms T0 and T1, from a cpu_trace."""
    marks = [json.loads(l) for l in open(trace_file) if l.strip()]
    before = [m for m in marks if m["ms"] <= t0] or marks[:1]
    after = [m for m in marks if m["ms"] >= t1] or marks[-1:]
    a, b = before[-1], after[0]
    hz = os.sysconf("SC_CLK_TCK")
    return {
        "machine_core_s": (b["busy"] - a["busy"]) / hz,
        "machine_busy_pct": (b["busy"] - a["busy"]) / max(1, b["total"] - a["total"]) * 100,
        "hosts_core_s": (b["hosts_us"] - a["hosts_us"]) / 1e6,
    }


def cpu_sample(es_pid, host_prefix=""):
    f = open("/proc/stat").readline().split()[1:]
    t = [int(x) for x in f]
    busy = t[0] + t[1] + t[2] + t[5] + t[6] + t[7]  # user nice system irq softirq steal
    es_ticks = 0
    try:
        st = open(f"/proc/{es_pid}/stat").read().rsplit(")", 1)[1].split()
        es_ticks = int(st[11]) + int(st[12])
    except (OSError, IndexError, ValueError):
        pass
    # the test hosts' cgroups: agents, no-op Kibanas, apt
    hosts_us = sum(cgroup_usec(d) for d in host_cgroups(host_prefix)) if host_prefix else 0
    return {"ms": now_ms(), "busy": busy, "total": sum(t[:8]), "es": es_ticks, "hosts_us": hosts_us,
            "load": float(open("/proc/loadavg").read().split()[0])}


def agent_requests(path):
    counts = {}
    for node in json.load(open(path)).get("nodes", {}).values():
        for c in node.get("http", {}).get("clients", []):
            if c.get("agent", "").startswith("kibana-rollback"):
                counts[c["id"]] = c.get("request_count", 0)
    return counts


def scale_window(prefix, n, c0, c1, m0, m1):
    a, b = agent_requests(c0), agent_requests(c1)
    reqs = sum(v - a.get(k, 0) for k, v in b.items())
    m0, m1 = json.load(open(m0)), json.load(open(m1))
    secs = (m1["ms"] - m0["ms"]) / 1000
    hz = os.sysconf("SC_CLK_TCK")
    busy = (m1["busy"] - m0["busy"]) / max(1, m1["total"] - m0["total"]) * 100
    print(f"{prefix}.window {secs:.1f} s")
    print(f"{prefix}.requests {reqs} requests")
    print(f"{prefix}.requests_per_s {reqs / secs:.2f} req/s")
    print(f"{prefix}.requests_per_s_per_agent {reqs / secs / int(n):.3f} req/s")
    print(f"{prefix}.machine_cpu_busy {busy:.1f} %")
    print(f"{prefix}.es_cpu {(m1['es'] - m0['es']) / hz / secs * 100:.1f} %core")
    if m0.get("hosts_us"):
        print(f"{prefix}.hosts_cpu {(m1['hosts_us'] - m0['hosts_us']) / 1e6 / secs * 100:.1f} %core")
    print(f"{prefix}.load1 {m0['load']:.2f}->{m1['load']:.2f} loadavg")


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(p / 100 * len(xs) + 0.5)) - 1))] if xs else float("nan")


# The host step whose acknowledgement each phase waits for.
PHASE_STEP = {"preflight": "CheckAvailable", "prefetching": "Prefetch", "stopping": "StopUnit",
              "reinstalling": "Reinstall", "starting": "StartUnit"}


def scale_phases(prefix, n, history_file, journal_file):
    import re
    op = json.load(open(history_file))["operations"][0]  # newest first
    # The operation's creation (its first entry) and every change of phase.
    changes = [(parse_wall(c["at"]), c["to"]) for i, c in enumerate(op["phases"])
               if i == 0 or c["from"] != c["to"]]
    # Per agent: when it logged seeing each phase, and when each acknowledgement's write
    # returned (the leader may read the ack a moment before that: an upper bound).
    seen, acks = {}, {}
    for line in open(journal_file):
        if not line.startswith("{"):
            continue
        e = json.loads(line)
        msg = e.get("MESSAGE") or ""
        if isinstance(msg, list):
            msg = bytes(msg).decode("utf-8", "replace")
        agent = (e.get("_HOSTNAME"), e.get("_SYSTEMD_UNIT"))
        t = int(e["__REALTIME_TIMESTAMP"]) // 1000
        m = re.match(r"operation (\S+) is in phase (\w+)", msg)
        if m and m.group(1) == op["operation"]:
            seen.setdefault(agent, {}).setdefault(m.group(2), t)
        m = re.match(r"acknowledged (\w+): Ok", msg)
        if m and e.get("OPERATION_ID") == op["operation"]:
            acks.setdefault(agent, {}).setdefault(m.group(1), t)
    prop_all, ack_all, react = [], [], []
    for k, (t, phase) in enumerate(changes):
        end = changes[k + 1][0] if k + 1 < len(changes) else None
        prop = [v[phase] - t for v in seen.values() if phase in v]
        # The creation is picked up by idle agents (polling every 5 s), the rest by agents
        # polling as an operation runs.
        what = "pickup" if k == 0 else "propagation"
        if k > 0:
            prop_all += prop
        if prop:
            print(f"{prefix}.phase.{phase}.{what}.p50 {pct(prop, 50)} ms")
            print(f"{prefix}.phase.{phase}.{what}.max {max(prop)} ms ({len(prop)} agents)")
        step = PHASE_STEP.get(phase)
        ack = [v[step] - t for v in acks.values() if step in v]
        if step and ack:
            ack_all += ack
            print(f"{prefix}.phase.{phase}.ack.p50 {pct(ack, 50)} ms")
            print(f"{prefix}.phase.{phase}.ack.p99 {pct(ack, 99)} ms")
            print(f"{prefix}.phase.{phase}.ack.max {max(ack)} ms ({len(ack)} agents)")
            if end is not None:
                react.append(end - t - max(ack))
                print(f"{prefix}.phase.{phase}.last_ack_to_next_phase {end - t - max(ack)} ms")
        if end is not None:
            print(f"{prefix}.phase.{phase}.duration {end - t} ms")
    print(f"{prefix}.propagation.p50 {pct(prop_all, 50)} ms")
    print(f"{prefix}.propagation.p99 {pct(prop_all, 99)} ms")
    print(f"{prefix}.ack.p50 {pct(ack_all, 50)} ms")
    print(f"{prefix}.ack.p99 {pct(ack_all, 99)} ms")
    if react:
        print(f"{prefix}.last_ack_to_next_phase.max {max(react)} ms")
    print(f"{prefix}.operation.phases {'/'.join(p for _, p in changes)} -")


def pageout(pid):
    """Pages out every mapping of PID's executable; prints how many bytes were asked for."""
    import ctypes
    import re
    libc = ctypes.CDLL(None, use_errno=True)

    class Iovec(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

    exe = os.readlink(f"/proc/{pid}/exe")
    ranges = []
    for line in open(f"/proc/{pid}/maps"):
        m = re.match(r"([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \d+\s*(.*)", line)
        if m and m.group(3) == exe:
            ranges.append(Iovec(int(m.group(1), 16), int(m.group(2), 16) - int(m.group(1), 16)))
    sys_pidfd_open, sys_process_madvise, madv_pageout = 434, 440, 21  # x86_64
    pidfd = libc.syscall(sys_pidfd_open, int(pid), 0)
    if pidfd < 0:
        sys.exit(f"pidfd_open({pid}): errno {ctypes.get_errno()}")
    vec = (Iovec * len(ranges))(*ranges)
    done = libc.syscall(sys_process_madvise, pidfd, vec, len(ranges), madv_pageout, 0)
    if done < 0:
        sys.exit(f"process_madvise({pid}): errno {ctypes.get_errno()}")
    print(done)


def scale_report(results):
    """One line per figure across the sizes: `scale.FIGURE a/b/c unit (agents x/y/z)`."""
    import re
    by = {}
    for line in open(results):
        parts = line.split()
        m = re.match(r"agents(\d+)\.(.+)", parts[0]) if len(parts) >= 3 else None
        if m:
            by.setdefault(m.group(2), {})[int(m.group(1))] = (parts[1], parts[2])
    keys = ["registered", "idle.requests_per_s", "idle.requests_per_s_per_agent", "idle.machine_cpu_busy",
            "idle.es_cpu", "idle.hosts_cpu", "operation.total", "operation.requests_per_s",
            "operation.requests_per_s_per_agent", "operation.machine_cpu_busy", "operation.es_cpu", "operation.hosts_cpu",
            "propagation.p50", "propagation.p99", "ack.p50", "ack.p99", "last_ack_to_next_phase.max"]
    for k in keys:
        if k in by:
            sizes = sorted(by[k])
            vals = "/".join(by[k][n][0] for n in sizes)
            print(f"scale.{k} {vals} {by[k][sizes[0]][1]} (agents {'/'.join(map(str, sizes))})")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "poll":
        poll(args[0], args[1], args[2:])
    elif cmd == "manual":
        print(json.dumps(manual(*args)))
    elif cmd == "tool":
        print(json.dumps(tool(args[0], args[1], args[2], int(args[3]), *args[4:])))
    elif cmd == "cpu-trace":
        cpu_trace(args[0], args[1])
    elif cmd == "unit-cpu":
        print(json.dumps(unit_cpu(args[0])))
    elif cmd == "report":
        report(args)
    elif cmd == "kibana":
        kibana(args[0])
    elif cmd == "cpu-mark":
        cpu_mark(*args)
    elif cmd == "scale-window":
        scale_window(*args)
    elif cmd == "scale-phases":
        scale_phases(*args)
    elif cmd == "scale-report":
        scale_report(args[0])
    elif cmd == "pageout":
        pageout(args[0])
    else:
        sys.exit(__doc__)
