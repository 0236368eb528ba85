"""What a ``prefstream train`` run keeps in ``OUT/state.json``, written atomically (temporary
file, fsync, rename) after the adapter it names is on disk:

* ``offsets``: the stream position (partition → next offset) the adapter has read up to;
* ``trained``: the ids of the records trained on this epoch (no record is trained twice);
* ``adapter``: the round directory holding the newest adapter (PEFT + GGUF + ``trained.json``);
* ``pending``: that adapter is saved but not yet published (a crash between the two publishes
  it on restart); ``version``: the policy version it was published as;
* ``gone``: the ids a late label took back (superseded or withdrawn), never trained from then on;
* ``trained_then_withdrawn``: how many records were taken back after they were trained (an
  adapter cannot untrain them; counted, logged and in each version's ``trained_on``).

A kill -9 anywhere leaves either the old state (the round's training is lost and redone from
the same position, on the same records, from the old adapter) or the new one.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class State:
    offsets: dict[int, int] = field(default_factory=dict)
    trained: list[str] = field(default_factory=list)
    epoch: int = 0
    round: int = 0
    steps: int = 0
    adapter: str | None = None
    pending: bool = False
    version: int | None = None
    sha256: str | None = None
    gone: list[str] = field(default_factory=list)
    trained_then_withdrawn: int = 0

    @classmethod
    def load(cls, out: Path) -> "State":
        path = out / "state.json"
        if not path.exists():
            return cls()
        data = json.loads(path.read_text())
        data["offsets"] = {int(k): int(v) for k, v in data.get("offsets", {}).items()}
        return cls(**data)

    def save(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / f".state.json.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(asdict(self), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out / "state.json")
        fd = os.open(out, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
