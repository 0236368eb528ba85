"""Added latency of the capture proxy over direct upstream calls, on loopback.

    .venv/bin/python benchmarks/proxy_latency.py [--upstream URL] [--requests 2000]
        [--concurrency 16] [--max-seconds 60] [--delay-ms 50] [--jitter 0] [--stream]
        [--capture-rate 1.0]

Starts an embedded Tansu broker and `prefstream ingest --upstream …` as a subprocess (capture on:
every sampled request is published to `prompts`, as in production), then sends the same chat
request at the given concurrency, alternating phases straight to the upstream and through the
proxy, bounded by --requests (total, both paths) and --max-seconds. Added latency = the proxy's
percentile minus the direct percentile.

Without --upstream, a stand-in OpenAI-compatible upstream (this file, --serve-upstream) answers
every request after --delay-ms, so the proxy's own cost is not buried in model noise; pass
--upstream to measure against a real server (`vllm serve`, `python -m llama_cpp.server`).
The last line printed is a JSON object with the figures.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streams.broker import EmbeddedBroker, free_port  # noqa: E402

CHAT = {"model": "bench", "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 8,
        "temperature": 0}


def stand_in_upstream(delay_s: float, jitter: float):
    """A minimal OpenAI-compatible ASGI app: a fixed answer after ``delay_s`` ± ``jitter`` of it
    (uniform), as a model's answer time varies with the answer's length."""
    words = ["Blue", " is", " a", " colour", "."]
    rng = random.Random(0)

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            return await send({"type": "lifespan.shutdown.complete"})
        body, more = b"", True
        while more:
            msg = await receive()
            body, more = body + msg.get("body", b""), msg.get("more_body", False)
        await asyncio.sleep(delay_s * (1 + jitter * (2 * rng.random() - 1)))
        stream = scope["path"].endswith("/chat/completions") and json.loads(body or b"{}").get("stream")
        base = {"id": "chatcmpl-" + uuid.uuid4().hex, "created": int(time.time()), "model": "bench"}
        if stream:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})
            for w in words:
                ev = {**base, "object": "chat.completion.chunk",
                      "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]}
                await send({"type": "http.response.body", "body": f"data: {json.dumps(ev)}\n\n".encode(),
                            "more_body": True})
            return await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
        out = {**base, "object": "chat.completion", "usage": {"prompt_tokens": 5, "completion_tokens": 5},
               "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(words)},
                            "finish_reason": "stop"}]}
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": json.dumps(out).encode()})

    return app


def start(cmd: list[str], env: dict, health: str, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{cmd[2:4]} exited with {proc.returncode}; see {log}")
        try:
            if httpx.get(health, timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"{cmd} did not answer {health} within 60 s; see {log}")


def stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def phase(client: aiohttp.ClientSession, url: str, n: int, concurrency: int, body: bytes) -> list[float]:
    """n requests at the given concurrency; each request's seconds to the last byte (a failed
    request aborts)."""
    times: list[float] = []
    left = iter(range(n))
    headers = {"Content-Type": "application/json"}

    async def worker() -> None:
        for _ in left:
            t0 = time.perf_counter()
            async with client.post(url, data=body, headers=headers) as r:
                async for _chunk in r.content.iter_any():
                    pass
                if r.status != 200:
                    raise SystemExit(f"{url} answered {r.status}")
            times.append(time.perf_counter() - t0)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return times


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q / 100 * (len(xs) - 1)))]


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux); 0 where /proc is missing."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(args, direct_url: str, proxy_url: str, proxy_pid: int) -> dict:
    body = json.dumps({**CHAT, "stream": True} if args.stream else CHAT).encode()
    direct: list[float] = []
    proxied: list[float] = []
    # the load generator is aiohttp, not httpx: httpx's pool would spend more CPU than the proxy
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:
        for url in (direct_url, proxy_url):  # warm up connections and code paths
            await phase(client, url, args.concurrency * 2, args.concurrency, body)
        per_phase = max(args.concurrency, args.requests // (2 * args.rounds))
        t_end = time.monotonic() + args.max_seconds
        cpu = 0.0
        for _ in range(args.rounds):
            if time.monotonic() > t_end:
                break
            direct += await phase(client, direct_url, per_phase, args.concurrency, body)
            cpu0 = cpu_s(proxy_pid)
            proxied += await phase(client, proxy_url, per_phase, args.concurrency, body)
            cpu += cpu_s(proxy_pid) - cpu0
    ms = lambda x: round(x * 1000, 3)  # noqa: E731
    return {
        "requests_direct": len(direct), "requests_proxy": len(proxied), "concurrency": args.concurrency,
        "stream": args.stream, "direct_p50_ms": ms(pct(direct, 50)), "direct_p99_ms": ms(pct(direct, 99)),
        "proxy_p50_ms": ms(pct(proxied, 50)), "proxy_p99_ms": ms(pct(proxied, 99)),
        "added_p50_ms": ms(pct(proxied, 50) - pct(direct, 50)), "added_p99_ms": ms(pct(proxied, 99) - pct(direct, 99)),
        "direct_p90_ms": ms(pct(direct, 90)), "proxy_p90_ms": ms(pct(proxied, 90)),
        "direct_max_ms": ms(max(direct)), "proxy_max_ms": ms(max(proxied)),
        "proxy_cpu_ms_per_request": ms(cpu / max(1, len(proxied))),
    }


def captures(proxy_base: str) -> dict:
    out: dict[str, float] = {}
    for line in httpx.get(proxy_base + "/metrics").text.splitlines():
        if line.startswith(("prefstream_captures_total{", "prefstream_captures_dropped_total{")):
            name, value = line.rsplit(" ", 1)
            out[name.replace("prefstream_", "")] = float(value)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--upstream", help="a real OpenAI-compatible server (default: the stand-in upstream)")
    p.add_argument("--requests", type=int, default=2000, help="total requests, both paths together")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rounds", type=int, default=10, help="alternating direct/proxy phases")
    p.add_argument("--max-seconds", type=float, default=60.0, help="no new round starts after this")
    p.add_argument("--delay-ms", type=float, default=50.0, help="the stand-in upstream's answer time")
    p.add_argument("--jitter", type=float, default=0.0,
                   help="the stand-in's answer time varies uniformly by ± this share of --delay-ms; 0 = "
                        "every answer takes the same time, so 16 clients arrive in lock-step bursts")
    p.add_argument("--stream", action="store_true", help="streaming requests (time to the last byte)")
    p.add_argument("--capture-rate", type=float, default=1.0)
    p.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_upstream:
        import uvicorn

        uvicorn.run(stand_in_upstream(args.delay_ms / 1000, args.jitter), host="127.0.0.1", port=args.serve_upstream,
                    log_level="warning", access_log=False)
        return
    logs = ROOT / ".prefstream" / "bench"
    logs.mkdir(parents=True, exist_ok=True)
    upstream = proxy = None
    with EmbeddedBroker(log_path=logs / "tansu.log") as broker:
        try:
            if args.upstream:
                upstream_base = args.upstream.rstrip("/").removesuffix("/v1")
            else:
                port = free_port()
                upstream_base = f"http://127.0.0.1:{port}"
                upstream = start([sys.executable, __file__, "--serve-upstream", str(port), "--delay-ms",
                                  str(args.delay_ms), "--jitter", str(args.jitter)], dict(os.environ),
                                 upstream_base + "/v1/models",
                                 logs / "upstream.log")
            proxy_port = free_port()
            env = {**os.environ, "PREFSTREAM_BROKER": broker.address, "PREFSTREAM_NAMESPACE": "bench" + uuid.uuid4().hex[:6],
                   "PREFSTREAM_INGEST_RATE_LIMIT": "0", "PREFSTREAM_INGEST_CAPTURE_RATE": str(args.capture_rate),
                   "PREFSTREAM_LOG_LEVEL": "WARNING"}
            env.pop("PREFSTREAM_INGEST_KEYS", None)
            proxy_base = f"http://127.0.0.1:{proxy_port}"
            proxy = start([sys.executable, "-m", "streams.commands.cli", "ingest", "--port", str(proxy_port), "--upstream",
                           upstream_base], env, proxy_base + "/healthz", logs / "proxy.log")
            result = asyncio.run(measure(args, upstream_base + "/v1/chat/completions",
                                         proxy_base + "/v1/chat/completions", proxy.pid))
            result.update(upstream=args.upstream or f"stand-in ({args.delay_ms:g} ms +/- {args.jitter:.0%})",
                          **captures(proxy_base))
        finally:
            stop(proxy)
            stop(upstream)
    print(f"direct p50 {result['direct_p50_ms']} ms p99 {result['direct_p99_ms']} ms; "
          f"proxy p50 {result['proxy_p50_ms']} ms p99 {result['proxy_p99_ms']} ms")
    print(f"added by the proxy at concurrency {args.concurrency}: p50 {result['added_p50_ms']} ms, "
          f"p99 {result['added_p99_ms']} ms")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
