"""A tiny OpenAI-compatible model server for the fault tests: deterministic, fast, and a
real process on a real port, so a test can take the model backend away (kill it) and
bring it back on the same port.

Each choice is a function of the prompt and its seed alone: for a math prompt ("What is
A + B?") an even seed answers ``#### A+B`` and an odd seed ``#### A+B+1``; so a candidate
set written with consecutive seeds always has one right and one wrong answer, and a replay
writes exactly the same texts. ``--delay S`` makes every request take S seconds.

    python -m tests.faults.echo_server --port 8123 [--delay 0.5]
"""
from __future__ import annotations

import argparse
import json
import re
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_INT = re.compile(r"-?\d+")


def answer(text: str, seed: int | None) -> str:
    """The deterministic response to ``text`` under ``seed``."""
    numbers = [int(n) for n in _INT.findall(text.rsplit("Question:", 1)[-1])]
    right = sum(numbers)
    seed = 0 if seed is None else seed
    return f"The sum is computed step by step.\n#### {right if seed % 2 == 0 else right + 1}"


def completion(body: dict, chat: bool) -> dict:
    if chat:
        text = next((m.get("content") or "" for m in reversed(body.get("messages") or [])
                     if m.get("role") == "user"), "")
    else:
        text = body.get("prompt") or ""
    n, seed = int(body.get("n") or 1), body.get("seed")
    choices = []
    for j in range(n):
        out = answer(text, None if seed is None else seed + j)
        choice = {"index": j, "finish_reason": "stop"}
        choice.update({"message": {"role": "assistant", "content": out}} if chat else {"text": out})
        choices.append(choice)
    return {"id": "cmpl-echo", "object": "chat.completion" if chat else "text_completion",
            "model": body.get("model", "echo"), "choices": choices,
            "usage": {"prompt_tokens": len(text.split()), "completion_tokens": 8 * n}}


class Handler(BaseHTTPRequestHandler):
    delay_s = 0.0
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet: thousands of requests per test
        return

    def do_GET(self) -> None:
        self._reply(200, {"status": "ok"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self._reply(400, {"error": "body is not JSON"})
            return
        if self.path.endswith("/chat/completions"):
            chat = True
        elif self.path.endswith("/completions"):
            chat = False
        else:
            self._reply(404, {"error": f"no route {self.path}"})
            return
        if self.delay_s:
            time.sleep(self.delay_s)
        self._reply(200, completion(body, chat))

    def _reply(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--delay", type=float, default=0.0)
    args = ap.parse_args(argv)
    Handler.delay_s = args.delay
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"echo model server on 127.0.0.1:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
