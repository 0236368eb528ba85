"""`prefstream train --loss kto` for real, on a tiny random Gemma 3 and a real broker: it trains
every unpaired record of its objective once (no pair, no other objective's record) and each
version it publishes names the loss."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("peft")
pytest.importorskip("gguf")

from streams.policies import policy_history  # noqa: E402
from tests.conftest import ROOT, settings_env  # noqa: E402
from tests.integration.test_tap import pair  # noqa: E402
from tests.integration.test_train import publish  # noqa: E402
from tests.tiny_gemma import tiny_gemma  # noqa: E402
from tests.unit.test_train_kto import unpaired  # noqa: E402


def test_train_kto_trains_the_unpaired_records(settings, tmp_path):
    mine = [unpaired(i, label=i % 3 == 0) for i in range(6)]
    asyncio.run(publish(settings, mine[:3] + [pair(0, "math@1"), unpaired(9, True, "other@1")] + mine[3:]))
    base, out = tiny_gemma(tmp_path / "tiny"), tmp_path / "train"
    cmd = [sys.executable, "-m", "streams.commands.cli", "train", "--objective", "math", "--policy", "tutor",
           "--loss", "kto", "--every", "4", "--lr", "1e-2", "--rank", "4", "--until-idle", "3",
           "--base", str(base), "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, env={**settings_env(settings), "HF_HUB_OFFLINE": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    history = asyncio.run(policy_history(settings, "tutor"))
    assert [p.version for p in history] == [1, 2, 3]  # the untrained adapter, then rounds of 4 and 2
    assert [p.loss for p in history] == ["kto"] * 3
    trained = []
    for p in history[1:]:
        ids = json.loads((Path(p.adapter_gguf).parent / "trained.json").read_text())["ids"]
        assert p.trained_on["records"] == len(ids) and p.trained_on["steps"] >= 1
        trained += ids
    assert sorted(trained) == sorted(r.id for r in mine)
    assert sum(p.trained_on["desirable"] for p in history[1:]) == 2  # u0, u3
    assert sum(p.trained_on["undesirable"] for p in history[1:]) == 4
