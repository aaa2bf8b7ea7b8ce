"""One-time queries: which of a fingerprint's queries were already sent, so no verification sends a
query the server has seen before.

A server that records the answers to everything it is asked while it is honest can later serve a
tampered model to every input it has not seen and replay the recorded answers to the rest: with the
same queries every run, it looks intact forever. A fingerprint with a large pool, verified a few
queries at a time through a :class:`Ledger`, defeats that: each run draws queries never sent before
(chosen with fresh OS randomness, so the server cannot predict them), records them *before* sending
(a crash mid-run never allows reuse), and says how many fresh ones remain.

The ledger is one small JSON file per fingerprint id in ``<key folder>/ledger/``, written atomically.
It is the verifier's own state, but parsed with the same bounds as any file.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import numpy as np

from nnseal._io import atomic_write_text, parse_json
from nnseal.errors import NnsealError
from nnseal.fingerprint import Fingerprint
from nnseal.signing import key_dir

MAX_LEDGER_BYTES = 64 << 20


class Ledger:
    """The sent-query record of every fingerprint verified from this machine (``folder``)."""

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else key_dir() / "ledger"

    def path(self, fp: Fingerprint) -> Path:
        return self.folder / f"{fp.id}.json"

    def sent(self, fp: Fingerprint) -> np.ndarray:
        """Sorted indices of the queries of ``fp`` already sent."""
        path = self.path(fp)
        if not path.exists():
            return np.zeros(0, np.int64)
        data = parse_json(path.read_bytes(), max_bytes=MAX_LEDGER_BYTES, what=f"ledger {path}")
        sent = data.get("sent") if isinstance(data, dict) else None
        if (
            not isinstance(sent, list)
            or data.get("fingerprint") != fp.id
            or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(fp) for i in sent)
        ):
            raise NnsealError(
                f"ledger {path} is damaged; move it away to start a new record (all queries fresh)"
            )
        return np.unique(np.asarray(sent, dtype=np.int64))

    def remaining(self, fp: Fingerprint) -> int:
        """How many queries of ``fp`` were never sent."""
        return len(fp) - len(self.sent(fp))

    def draw(self, fp: Fingerprint, n: int, *, reuse: bool = False, seed: int | None = None) -> np.ndarray:
        """``n`` queries of ``fp`` never sent before, recorded as sent before they are returned.

        With ``reuse``, fresh queries are used first and the rest drawn from those already sent;
        without it, too few fresh queries is an error. ``seed`` is for tests only: by default the
        draw uses fresh OS randomness, so a server cannot predict the next run's queries.
        """
        if not 1 <= n <= len(fp):
            raise ValueError(f"queries per run must be in 1..{len(fp)} (the fingerprint's size), got {n}")
        rng = np.random.default_rng(secrets.randbits(128) if seed is None else seed)
        sent = self.sent(fp)
        fresh = np.setdiff1d(np.arange(len(fp)), sent)
        if len(fresh) < n and not reuse:
            raise NnsealError(
                f"only {len(fresh)} of the fingerprint's {len(fp)} queries were never sent, {n} wanted: make "
                "a new fingerprint (or one with a larger pool), or allow reusing sent queries (--reuse; a "
                "server that replays recorded answers could then pass)"
            )
        picked = rng.permutation(fresh)[:n]
        if len(picked) < n:
            picked = np.concatenate([picked, rng.choice(sent, n - len(picked), replace=False)])
        record = {"fingerprint": fp.id, "model_id": fp.model_id, "sent": np.union1d(sent, picked).tolist()}
        atomic_write_text(self.path(fp), json.dumps(record))
        return picked
