#!/usr/bin/env python3
"""Each thread's CPU over a window, summed by thread name, from /proc (no perf needed).

    tools/thread_cpu.py --name visiond --seconds 20 [--wait 30]

Waits up to --wait seconds for a process named --name (or takes --pid), then reads every
thread's user + system time at the start and at the end of the window (or when the process
ends) and prints, per thread name with trailing digits dropped (src-s0..src-s15 together), the
CPU used in percent of one core, busiest first. `top -H` is not used: its row for the main
thread shows the whole process's time.
"""

import argparse
import os
import re
import sys
import time

TICKS = os.sysconf("SC_CLK_TCK")


def find(name, wait):
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/comm") as f:
                        if f.read().strip() == name:
                            return int(entry)
                except OSError:
                    pass
        time.sleep(0.2)
    return None


def threads(pid):
    """thread id -> (name, ticks of user + system time)"""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The name is in parentheses and may hold spaces; the fields after it are fixed.
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[tid] = (name, int(fields[11]) + int(fields[12]))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pid", type=int)
    parser.add_argument("--name", default="visiond")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--wait", type=float, default=0.0)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    pid = args.pid or find(args.name, args.wait)
    if pid is None:
        print(f"thread_cpu: no process named {args.name}", file=sys.stderr)
        return 1
    start = threads(pid)
    began = time.monotonic()
    end = start
    # Read every half second so that a process ending early still leaves its last reading.
    while time.monotonic() - began < args.seconds:
        time.sleep(0.5)
        now = threads(pid)
        if not now:
            break
        end = now
    elapsed = time.monotonic() - began
    used = {}
    for tid, (name, ticks) in end.items():
        before = start.get(tid, (name, 0))[1]
        key = re.sub(r"\d+$", "", name)
        used[key] = used.get(key, 0) + ticks - before
    print(f"threads of pid {pid} over {elapsed:.1f} s, % of one core:")
    for key, ticks in sorted(used.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {key:<16} {ticks / TICKS / elapsed * 100:6.0f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
