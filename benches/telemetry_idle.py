#!/usr/bin/env python3
"""Idle CPU of the daemon with MQTT telemetry and the operator page on vs off.

"Idle" is a kiosk waiting for its camera: the daemon runs with a camera node that does not exist
(it retries with back-off), so what it spends is its own threads' wake-ups: the control loop, and
with telemetry the MQTT thread (status every `status_interval_s`, spool polls) and the HTTP
thread. A third case adds a poller doing what an open operator page does (GET /api/status and
/api/records once a second). CPU is the process's user+system time from /proc/PID/stat over the
measured window, after a warm-up (model load). Needs `mosquitto` (Debian's package). Standard
library only.

    python3 benches/telemetry_idle.py [--bin target/release/veriface] [--seconds 60]
"""

import argparse
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of stat; fields[0] here is field 3.
    return (int(fields[11]) + int(fields[12])) / TICK


def run(binary: str, dir: Path, extra: str, seconds: float, poll_port: int | None) -> float:
    config = dir / "veriface.toml"
    config.write_text(
        f'device_id = "idle"\n[camera]\ndevice = "/dev/video99"\n'
        f'[records]\ndir = "{dir / "records"}"\n[status]\npath = ""\n{extra}'
    )
    env = dict(os.environ, RUST_LOG="error")
    p = subprocess.Popen([binary, "run", "--quiet", "--config", str(config)], cwd=ROOT, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(10)  # models load, threads settle
        start, t0 = cpu_s(p.pid), time.monotonic()
        while time.monotonic() - t0 < seconds:
            if poll_port:
                for path in ("/api/status", "/api/records"):
                    urllib.request.urlopen(f"http://127.0.0.1:{poll_port}{path}", timeout=5).read()
            time.sleep(1)
        return (cpu_s(p.pid) - start) / (time.monotonic() - t0)
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=10)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default=str(ROOT / "target/release/veriface"))
    ap.add_argument("--seconds", type=float, default=60)
    args = ap.parse_args()
    mosquitto = "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else "mosquitto"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        port = free_port()
        (tmp / "mosquitto.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
        broker = subprocess.Popen([mosquitto, "-c", str(tmp / "mosquitto.conf")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        http = free_port()
        on = f'[mqtt]\nurl = "mqtt://127.0.0.1:{port}"\n[http]\nlisten = "127.0.0.1:{http}"\n'
        try:
            cases = [("off", "", None), ("mqtt + http on", on, None),
                     ("on, page open (2 requests/s)", on, http)]
            print(f"idle CPU over {args.seconds:.0f} s ({Path(args.bin).name}, camera absent)")
            for name, extra, poll in cases:
                case_dir = tmp / name.replace(" ", "_").replace("/", "")
                case_dir.mkdir()
                share = run(args.bin, case_dir, extra, args.seconds, poll)
                print(f"  {name:32s} {share * 100:6.2f} % of one core")
        finally:
            broker.terminate()
            broker.wait()


if __name__ == "__main__":
    main()
