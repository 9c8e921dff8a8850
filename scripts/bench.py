#!/usr/bin/env python3
"""scripts/bench's measuring and arithmetic (standard library only).

  bench.py poll OUT VERSION URL...   poll every URL's /api/status at 20 Hz each until every host
                                      has said "available at VERSION" for 0.5 s (or SIGTERM);
                                      OUT gets, per host, the first moment (wall ms) it did so
  bench.py manual POLL STEPS         one run of scripts/rollback-by-hand -> a JSON record
  bench.py tool POLL HISTORY JOURNAL TRIGGER_MS
                                      one kibana-rollback run -> a JSON record (step times from
                                      the agents' journals, phase times from `history --json`)
  bench.py report RESULTS...         medians of the records, one `name value unit` line each

Downtime is first stop -> last host available at the target; the floor is the slowest stop +
safety snapshot + restore + slowest (install + start until available), from the same run's step
times; overhead = downtime - floor.
"""
import json
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


def manual(poll_file, steps_file):
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


def tool(poll_file, history_file, journal_file, trigger_ms):
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
        out.append((f"{p}.runs", len(rs), "runs"))
        if how == "kibana-rollback" and (n, "by-hand") in runs:
            h = runs[(n, "by-hand")]
            out.append((f"hosts{n}.ratio", med([r["downtime_ms"] for r in rs]) / med([r["downtime_ms"] for r in h]), "x"))
    for name, v, unit in out:
        print(f"{name} {v:.3f} {unit}" if isinstance(v, float) else f"{name} {v} {unit}")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "poll":
        poll(args[0], args[1], args[2:])
    elif cmd == "manual":
        print(json.dumps(manual(*args)))
    elif cmd == "tool":
        print(json.dumps(tool(args[0], args[1], args[2], int(args[3]))))
    elif cmd == "report":
        report(args)
    else:
        sys.exit(__doc__)
