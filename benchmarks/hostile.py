"""What the attacks of issue 26 (items 6 and 7) cost now, on loopback.

    .venv/bin/python benchmarks/hostile.py [--connections 220] [--header-timeout 10]

Starts `prefstream ingest` (as a subprocess, default settings but the header deadline, no broker
behind it: every attack here is refused before a publish) and measures:

- slowloris: ``--connections`` connections each sending half a request's headers, then nothing;
  seconds until the server has closed every one (was: all still open after 40 s);
- the answer to 100,000 invalid items in one body (was 16.9 MB), under the default item cap and
  under a raised one (so the error list itself is measured), and to 60,000 prompts in one body;
- the issue's 504-byte YAML alias bomb (nine levels) in `parse_objective`: seconds and peak RSS
  growth until it is refused (was 64 s and 1.5 GiB).

The last line printed is a JSON object with the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streams.broker import free_port  # noqa: E402
from agents.objectives import ObjectiveError, parse_objective  # noqa: E402

KEY = "sk-bench-hostile"


def start(port: int, log: Path, **settings: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFSTREAM_BROKER": f"127.0.0.1:{free_port()}",
           "PREFSTREAM_INGEST_KEYS": KEY, **{f"PREFSTREAM_{k.upper()}": v for k, v in settings.items()}}
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streams.commands.cli", "ingest", "--port", str(port)], cwd=ROOT,
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz")
            return proc
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"prefstream ingest did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)


def slowloris(port: int, n: int, wait_s: float) -> float | None:
    """Seconds until every half-sent connection was closed by the server; None if some were not."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=wait_s)
        s.sendall(b"POST /v1/prompts HTTP/1.1\r\nHost: x\r\nContent-Type: app")
        socks.append(s)
    t0 = time.monotonic()
    try:
        for s in socks:
            s.settimeout(max(0.1, wait_s - (time.monotonic() - t0)))
            try:
                if s.recv(1) != b"":
                    return None
            except TimeoutError:
                return None
        return time.monotonic() - t0
    finally:
        for s in socks:
            s.close()


def bomb() -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    prev = "a"
    for name in "bcdefghi":
        lines.append(f"{name}: &{name} [{','.join(['*' + prev] * 9)}]")
        prev = name
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=220)
    ap.add_argument("--header-timeout", type=float, default=10.0)
    args = ap.parse_args()
    url, auth = "http://127.0.0.1:{}/v1/prompts", {"Authorization": f"Bearer {KEY}"}
    invalid_body = json.dumps([{"x": 1}] * 100_000, separators=(",", ":")).encode()
    prompts_body = json.dumps([{"prompt": str(i)} for i in range(60_000)], separators=(",", ":")).encode()
    port = free_port()  # default settings but the header deadline
    proc = start(port, Path("/tmp") / f"hostile-ingest-{port}.log", ingest_header_timeout_s=str(args.header_timeout))
    try:
        closed_s = slowloris(port, args.connections, args.header_timeout + 30)
        invalid = httpx.post(url.format(port), content=invalid_body, headers=auth, timeout=60)
        many = httpx.post(url.format(port), content=prompts_body, headers=auth, timeout=60)
    finally:
        proc.terminate()
        proc.wait(20)
    port = free_port()  # the item cap raised, so the error list itself is measured
    proc = start(port, Path("/tmp") / f"hostile-ingest-{port}.log", ingest_max_items="200000",
                 ingest_rate_limit="0")
    try:
        listed = httpx.post(url.format(port), content=invalid_body, headers=auth, timeout=60)
    finally:
        proc.terminate()
        proc.wait(20)
    text = bomb()
    rss0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
    try:
        parse_objective(text)
        refused = False
    except ObjectiveError:
        refused = True
    bomb_s = time.perf_counter() - t0
    rss_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    out = {"slowloris_connections": args.connections,
           "slowloris_all_closed_s": None if closed_s is None else round(closed_s, 2),
           "invalid_100k_status": invalid.status_code, "invalid_100k_answer_bytes": len(invalid.content),
           "invalid_100k_uncapped_items_status": listed.status_code,
           "invalid_100k_uncapped_items_answer_bytes": len(listed.content),
           "prompts_60k_status": many.status_code, "alias_bomb_bytes": len(text.encode()),
           "alias_bomb_refused": refused, "alias_bomb_s": round(bomb_s, 4), "alias_bomb_rss_growth_mb": rss_mb}
    print(f"slowloris: {args.connections} half-sent requests all closed after {closed_s}")
    print(f"100,000 invalid items: HTTP {invalid.status_code}, {len(invalid.content)} bytes (item cap raised: "
          f"HTTP {listed.status_code}, {len(listed.content)} bytes); 60,000 prompts: HTTP {many.status_code}")
    print(f"alias bomb ({len(text.encode())} bytes): refused={refused} in {bomb_s:.4f}s, RSS +{rss_mb:.1f} MB")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
