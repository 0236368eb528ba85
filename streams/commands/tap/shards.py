"""Dataset shards: one training format (``streams.commands.tap.formats``) as committed JSONL + Parquet
shards, ``DIR/data/train-NNNNNN.parquet`` + ``DIR/jsonl/shard-NNNNNN.jsonl``, and a dataset
card, ``DIR/README.md``.

The commit protocol makes a crash at any point (kill -9, power loss) lose only rows that
were never committed, and never duplicate one. Rows collect in memory; a shard is committed
when it reaches ``max_bytes`` or ``max_seconds`` (and on close): both files are written
under ``DIR/.tmp`` and fsynced, the JSONL is renamed into place (the commit point), then
the Parquet. On open, ``.tmp`` is emptied, a Parquet shard without its JSONL twin is
removed, one missing its Parquet is rebuilt from the JSONL, and the ids index is rebuilt
from the committed JSONL shards. The tap reads its topic from the start, so whatever a
crash lost is written again, once. A superseded record (``streams.commands.tap.supersede``) leaves the open
shard, or the committed shard holding it is rewritten without it (the Parquet, then the JSONL,
each renamed into place); its id is kept in ``DIR/.superseded`` so it is never written again.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq

from streams.commands.tap.card import CardStats, render
from streams.commands.tap.formats import Format, FormatError
from streams.commands.tap.supersede import SupersededIds, target

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rotation:
    """When a shard is committed: at ``max_bytes`` of JSONL, or ``max_seconds`` after its first row."""

    max_bytes: int = 64 << 20
    max_seconds: float = 60.0


class _Line(msgspec.Struct):
    """What the index and the card need from a committed row."""

    id: str
    prompt_id: str = ""
    objective: str = ""
    models: list[str] = []
    evaluators: list[str] = []
    label: bool | None = None


_SEQ = re.compile(r"-(\d{6,})\.")
_line_decoder = msgspec.json.Decoder(_Line)
_encoder = msgspec.json.Encoder()


def _fsync_write(path: Path, write) -> None:
    with path.open("wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lock(path: Path):
    """An exclusive lock on the folder: two writers would number shards alike."""
    f = path.open("a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise FormatError(f"another tap is writing {path.parent}; stop it or use another --out") from None
    return f


class DatasetSink:
    """One training format as committed JSONL + Parquet shards and a dataset card."""

    def __init__(self, out_dir: str | os.PathLike, fmt: Format, rotation: Rotation = Rotation(),
                 topic: str = "") -> None:
        self.dir, self.fmt, self.rotation, self.topic = Path(out_dir), fmt, rotation, topic
        self.data, self.jsonl, self.tmp = self.dir / "data", self.dir / "jsonl", self.dir / ".tmp"
        for d in (self.data, self.jsonl):
            d.mkdir(parents=True, exist_ok=True)
        self._lock = _lock(self.dir / ".prefstream.lock")
        try:
            self._check_manifest()
        except FormatError:
            self._lock.close()
            raise
        shutil.rmtree(self.tmp, ignore_errors=True)  # uncommitted leftovers of a crash
        self.tmp.mkdir()
        self.seen: set[str] = set()
        self.where: dict[str, int | None] = {}  # record id → its shard (None: the open one)
        self.superseded = SupersededIds(self.dir / ".superseded")
        self.stats = CardStats()
        self.next_seq = self._recover()
        self.rows: list[dict] = []
        self.lines: list[bytes] = []
        self.size = 0
        self.opened_at = 0.0
        self.written = 0
        self._write_card()

    def _check_manifest(self) -> None:
        manifest = self.dir / ".prefstream.json"
        want = {"format": self.fmt.name, "style": self.fmt.style}
        if manifest.exists():
            have = json.loads(manifest.read_text())
            if have != want:
                raise FormatError(f"{self.dir} holds {have['format']} ({have['style']}) data, not "
                                  f"{want['format']} ({want['style']}); write this format to another --out")
        else:
            tmp = self.dir / ".prefstream.json.tmp"
            tmp.write_text(json.dumps(want) + "\n")
            os.replace(tmp, manifest)

    def _parquet(self, seq: int) -> Path:
        return self.data / f"train-{seq:06d}.parquet"

    def _jsonl(self, seq: int) -> Path:
        return self.jsonl / f"shard-{seq:06d}.jsonl"

    def _recover(self) -> int:
        """Index the committed shards; returns the next shard number."""
        seqs = sorted(int(_SEQ.search(p.name).group(1)) for p in self.jsonl.glob("shard-*.jsonl"))
        for p in self.data.glob("train-*.parquet"):
            if int(_SEQ.search(p.name).group(1)) not in seqs:
                logger.warning("%s: removing a shard that was never committed", p)
                p.unlink()
        for seq in seqs:
            raw = self._jsonl(seq).read_bytes()
            lines = [_line_decoder.decode(line) for line in raw.splitlines()]
            if any(x.id in self.superseded for x in lines):  # a crash before the shard was rewritten
                self._rewrite(seq, self.superseded.ids)
                raw = self._jsonl(seq).read_bytes() if self._jsonl(seq).exists() else b""
                lines = [x for x in lines if x.id not in self.superseded]
            for x in lines:
                self.seen.add(x.id)
                self.where[x.id] = seq
                self.stats.add(x.prompt_id, x.objective, x.models, x.evaluators, x.label)
            if raw and not self._parquet(seq).exists():  # the crash came between the two renames
                rows = [json.loads(line) for line in raw.splitlines()]
                self._write_parquet(rows, seq)
        self.stats.shards = len(seqs)
        return (seqs[-1] + 1) if seqs else 0

    def _write_parquet(self, rows: list[dict], seq: int) -> None:
        table = pa.Table.from_pylist(rows, schema=self.fmt.schema)
        tmp = self.tmp / self._parquet(seq).name
        _fsync_write(tmp, lambda f: pq.write_table(table, f))
        os.replace(tmp, self._parquet(seq))

    def write(self, record) -> bool:
        if (old := target(record)) is not None:
            self.drop(old)
        row = self.fmt.row(record)
        if row is None or record.id in self.seen or record.id in self.superseded:
            return False
        line = _encoder.encode(row)
        if not self.rows:
            self.opened_at = time.monotonic()
        self.rows.append(row)
        self.lines.append(line)
        self.size += len(line) + 1
        self.seen.add(record.id)
        self.where[record.id] = None
        self.stats.add(row["prompt_id"], row["objective"], row["models"], row["evaluators"], row.get("label"))
        self.written += 1
        if self.size >= self.rotation.max_bytes:
            self.commit()
        return True

    def drop(self, rid: str) -> None:
        """A superseded record leaves the files for good: its id is remembered (fsynced) first,
        then it leaves the open shard, or the one committed shard holding it is rewritten."""
        if rid in self.superseded:
            return
        self.superseded.add(rid)
        if rid not in self.seen:
            return
        seq = self.where.pop(rid)
        self.seen.discard(rid)
        if seq is None:
            keep = [i for i, row in enumerate(self.rows) if row["id"] != rid]
            self.size -= sum(len(self.lines[i]) + 1 for i in range(len(self.rows)) if i not in keep)
            self.rows, self.lines = [self.rows[i] for i in keep], [self.lines[i] for i in keep]
        else:
            self._rewrite(seq, {rid})
        self.stats.records -= 1
        self._write_card()

    def _rewrite(self, seq: int, drop: set[str]) -> None:
        """Shard ``seq`` without the rows in ``drop``: the Parquet first, then the JSONL (each
        under a temporary name, fsynced, renamed), so a crash between leaves the JSONL holding a
        dropped id, which the next open finds and rewrites again. A shard left empty is removed."""
        lines = [line for line in self._jsonl(seq).read_bytes().splitlines()
                 if _line_decoder.decode(line).id not in drop]
        if not lines:
            self._parquet(seq).unlink(missing_ok=True)
            self._jsonl(seq).unlink()
        else:
            self._write_parquet([json.loads(line) for line in lines], seq)
            jtmp = self.tmp / self._jsonl(seq).name
            _fsync_write(jtmp, lambda f: f.write(b"\n".join(lines) + b"\n"))
            os.replace(jtmp, self._jsonl(seq))
        _fsync_dir(self.jsonl)
        _fsync_dir(self.data)

    def flush(self) -> None:
        """Commit the open shard if it is due by time."""
        if self.rows and time.monotonic() - self.opened_at >= self.rotation.max_seconds:
            self.commit()

    def commit(self) -> None:
        if not self.rows:
            return
        seq = self.next_seq
        jtmp = self.tmp / self._jsonl(seq).name
        _fsync_write(jtmp, lambda f: f.write(b"\n".join(self.lines) + b"\n"))
        table = pa.Table.from_pylist(self.rows, schema=self.fmt.schema)
        ptmp = self.tmp / self._parquet(seq).name
        _fsync_write(ptmp, lambda f: pq.write_table(table, f))
        os.replace(jtmp, self._jsonl(seq))  # the commit point
        os.replace(ptmp, self._parquet(seq))
        _fsync_dir(self.jsonl)
        _fsync_dir(self.data)
        self.where.update((row["id"], seq) for row in self.rows)
        self.next_seq += 1
        self.stats.shards += 1
        self.rows, self.lines, self.size = [], [], 0
        self._write_card()

    def _write_card(self) -> None:
        tmp = self.tmp / "README.md"
        tmp.write_text(render(self.fmt, self.stats, self.topic), encoding="utf-8")
        os.replace(tmp, self.dir / "README.md")

    def close(self) -> None:
        self.commit()
        self.superseded.close()
        self._lock.close()  # releases the lock (the OS releases it too when a process dies)

    def __len__(self) -> int:
        return len(self.seen)
