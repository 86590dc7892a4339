"""The audit trail of `medprobe serve --log DIR`: every answer appended to DIR/answers.jsonl, one JSON line each.

A line holds the time, the image's SHA-256 (never its pixels or its file name: names often carry a patient's),
the model id and the full answer. Each line is written with one `write` on a file opened for appending, then
flushed and fsync'ed before the answer is sent, so a kill loses at most the line being written; a torn last
line is skipped, with a warning, when the log is read. The log is never rewritten or truncated.
"""

import csv
import io
import json
import logging
import os
import threading
from datetime import datetime, timezone
from pathlib import Path

from medprobe.core.errors import OutputError, ServeError

log = logging.getLogger(__name__)

LOG_FILE = "answers.jsonl"


class AuditLog:
    """Append-only JSONL; thread-safe.

    >>> AuditLog("audit/").append(answer)
    """

    def __init__(self, folder):
        self.path = Path(folder) / LOG_FILE
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as e:
            raise OutputError(f"--log {folder}: cannot append to {self.path} ({e.strerror}); give a writable folder") from e
        self._lock = threading.Lock()
        if self.path.stat().st_size and not _ends_with_newline(self.path):
            os.write(self._fd, b"\n")  # a line torn by a kill stays as it was; the next record starts on its own line

    def append(self, answer):
        record = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "image_sha256": answer["image"]["sha256"],
                  "model_id": answer["model"]["id"], "answer": answer}
        line = (json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode()
        with self._lock:
            os.write(self._fd, line)
            os.fsync(self._fd)

    def close(self):
        os.close(self._fd)


def _ends_with_newline(path):
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def read_log(folder):
    """The records of DIR/answers.jsonl, in order; a torn line (a kill mid-write) is skipped with a warning."""
    path = Path(folder) / LOG_FILE
    if not path.is_file():
        raise ServeError(f"{path} not found: give the folder the server's audit log was written to (its --log)")
    records = []
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            try:
                records.append(json.loads(line))
            except ValueError:
                log.warning("%s line %d: not a complete record (torn by a kill?); skipped", path, number)
    return records


def log_table(records):
    """CSV text: one row per answer with time, digest, model, label, each probability, decision and the OOD flag."""
    labels = list(dict.fromkeys(name for r in records for name in r["answer"]["probabilities"]))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["time", "image_sha256", "model_id", "label", *(f"p_{n}" for n in labels), "decision_rule", "decision",
                     "ood_flagged", "ood_percentile"])
    for r in records:
        a = r["answer"]
        decision, ood = a.get("decision") or {}, a.get("out_of_distribution") or {}
        writer.writerow([r["time"], r["image_sha256"], r["model_id"], a["label"], *(a["probabilities"].get(n, "") for n in labels),
                         decision.get("rule") or "", decision.get("label") or "", ood.get("flagged", ""), ood.get("percentile", "")])
    return out.getvalue()
