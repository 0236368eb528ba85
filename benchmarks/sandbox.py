"""What the code sandbox costs and holds on this machine:

- ``run_ms``: median wall time of one trivial bwrap run (``print(6 * 7)``), probe excluded;
- ``output``: code writes ``--output-mib`` MiB to stdout; how much the worker kept, whether the
  run was cut at the cap, and the worker's peak RSS before and after (``ru_maxrss``);
- ``tree``: four children of 96 MiB each under a 256 MiB limit; their exit codes (-9: killed).

Usage:

    python benchmarks/sandbox.py [--runs 20] [--output-mib 1600]

Prints one JSON line: {"bench": "sandbox", "containment", "run_ms", "output": {...}, "tree": [...]}.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.evaluators import sandbox  # noqa: E402

TREE = ("import os\npids = []\nfor _ in range(4):\n    pid = os.fork()\n    if pid == 0:\n"
        "        blob = b'x' * (96 << 20)\n        import time\n        time.sleep(1)\n        os._exit(0)\n"
        "    pids.append(pid)\nprint([os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids])\n")


async def main(runs: int, output_mib: int) -> dict:
    cfg = sandbox.Config()
    sandbox.probe(cfg)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        r = await sandbox.run({"s.py": "print(6 * 7)\n"}, ["s.py"], sandbox.Limits(), cfg)
        times.append((time.perf_counter() - t) * 1000)
    flood = f"import os\nblock = b'x' * (1 << 20)\nfor _ in range({output_mib}):\n    os.write(1, block)\n"
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    big = await sandbox.run({"s.py": flood}, ["s.py"], sandbox.Limits(wall_s=60), cfg)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    tree = await sandbox.run({"s.py": TREE}, ["s.py"], sandbox.Limits(memory_mb=256), cfg)
    return {"bench": "sandbox", "containment": r.containment, "run_ms": round(statistics.median(times), 1),
            "output": {"written_mib": output_mib, "kept_bytes": len(big.stdout), "cut": big.over_output,
                       "worker_maxrss_mib_before": before, "worker_maxrss_mib_after": after},
            "tree": json.loads(tree.stdout or b"null")}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--output-mib", type=int, default=1600)
    args = ap.parse_args()
    print(json.dumps(asyncio.run(main(args.runs, args.output_mib))))
