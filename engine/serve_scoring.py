"""What ``isostream serve`` does per request, without HTTP: raw body -> decoded events -> features -> scores.

:class:`ScoringService` is the stream's chain (:mod:`engine.steps`) for events that arrive over HTTP: the same
:class:`~streams.decode.Decoder` validates them, one :class:`~training.features.FeatureBuilder` keeps every
key's baseline across requests (so a key warms up as its events are scored, exactly as in the stream), and a
:class:`~engine.model_holder.ModelHolder` follows the registry's ``CURRENT`` pointer from a background thread.
A request reads the holder's detector once and scores with it throughout, so a swap never splits a request.

The service scores; it does not learn: online adaptation belongs to the engine's coordinator, which publishes
its versions through the registry that this service follows.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np
import orjson

from engine.config import Config
from engine.model_holder import ModelHolder
from engine.periodic import Periodic
from streams.decode import Decoder
from streams.records import RawBatch
from training.detector import Detector
from training.features import FeatureBuilder

log = logging.getLogger(__name__)

#: the pseudo-topic of HTTP events in dead letters and decoded frames
TOPIC = "http"
EXPLAIN = ("flagged", "all", "none")
_WS = b" \t\r\n"


class ServeError(RuntimeError):
    """A request the service answers with an HTTP error: ``status``, a one-line ``detail``, per-event ``errors``."""

    def __init__(self, status: int, detail: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"detail": self.detail}
        if self.errors is not None:
            out["errors"] = self.errors
        return out


def split_events(body: bytes, max_events: int) -> tuple[list[bytes], bool]:
    """The events of a request body, each as its own bytes, and whether the body was a list.

    A body is one JSON object or a JSON list of them. The list is cut at its top-level commas without being
    parsed, so every event reaches the :class:`~streams.decode.Decoder` as the exact bytes the client sent and
    is judged as the stream judges a Kafka message (a Python round trip would, e.g., turn a 30-digit id into
    a float). Line breaks between tokens become spaces: the decoder's bulk parse frames events by lines.

    >>> split_events(b'[{"a": "x,]"}, {"b": [1, 2]}]', 10)
    ([b'{"a": "x,]"}', b'{"b": [1, 2]}'], True)
    >>> split_events(b' {"a": 1}', 10)
    ([b'{"a": 1}'], False)

    Raises :class:`ServeError` (400) for an empty body, one that is neither an object nor a list, or whose
    strings and brackets do not balance; (413) for more than ``max_events`` events.
    """
    text = body.strip(_WS)
    if not text:
        raise ServeError(400, "empty body: send one JSON event object or a JSON list of them")
    if text[0] == ord("{"):
        return [text], False
    if text[0] != ord("[") or text[-1] != ord("]"):
        shown = text[:40].decode("utf-8", "replace")
        raise ServeError(400, f"body is not a JSON object or a JSON list of objects (it starts {shown!r})")
    inner = text[1:-1]
    if not inner.strip(_WS):
        return [], True
    buf = np.frombuffer(bytearray(inner), dtype=np.uint8)  # writable: the scan blanks line breaks in place
    cuts = np.empty(max_events, dtype=np.int64)
    n_cuts, status = _scan(buf, cuts)
    if status == _UNCLOSED:
        raise ServeError(400, "body is not valid JSON: a string is not closed")
    if status == _UNBALANCED:
        raise ServeError(400, "body is not valid JSON: its brackets do not balance")
    if status == _TOO_MANY:
        raise ServeError(413, f"more than {max_events} events in one request; serve.max_batch allows {max_events}")
    if b"\n" in inner or b"\r" in inner:
        inner = buf.tobytes()
    bounds = [0, *(cuts[:n_cuts] + 1).tolist(), len(inner) + 1]
    return [inner[a : b - 1].strip(_WS) for a, b in zip(bounds[:-1], bounds[1:], strict=False)], True


_OK, _UNCLOSED, _UNBALANCED, _TOO_MANY = 0, 1, 2, 3


@numba.njit(cache=True, nogil=True)
def _scan(buf: np.ndarray, cuts: np.ndarray) -> tuple[int, int]:  # pragma: no cover - compiled
    """One pass over a list's inside: the top-level commas into ``cuts``, line breaks outside strings blanked.

    Returns (commas found, status). One compiled pass: ~10x faster than the vectorised numpy equivalent, which
    needs a cumulative sum for string parity and a search per comma.
    """
    depth = 0
    n = 0
    in_string = False
    escaped = False
    for i in range(buf.shape[0]):
        c = buf[i]
        if in_string:
            if escaped:
                escaped = False
            elif c == 92:  # backslash
                escaped = True
            elif c == 34:  # quote
                in_string = False
        elif c == 34:
            in_string = True
        elif c == 123 or c == 91:  # { [
            depth += 1
        elif c == 125 or c == 93:  # } ]
            depth -= 1
            if depth < 0:
                return n, _UNBALANCED
        elif c == 44 and depth == 0:  # a comma between events
            if n + 1 >= cuts.shape[0]:  # this comma starts event max_events + 1
                return n, _TOO_MANY
            cuts[n] = i
            n += 1
        elif c == 10 or c == 13:  # \n \r
            buf[i] = 32
    if in_string:
        return n, _UNCLOSED
    if depth != 0:
        return n, _UNBALANCED
    return n, _OK


@dataclass
class Scored:
    """One request's answer: the encoded JSON and what it held."""

    body: bytes
    events: int
    anomalies: int
    model_version: str


@dataclass
class _Counters:
    requests: int = 0
    events: int = 0
    anomalies: int = 0
    rejected: int = 0
    started: float = field(default_factory=time.monotonic)


class ScoringService:
    """Scores HTTP events with the registry's current model (see the module doc); safe to share across threads.

    ``refresh`` follows ``CURRENT`` once; :meth:`start` runs it every ``serve.reload_poll_s`` on a daemon thread
    until :meth:`close`.
    """

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.decoder = Decoder(cfg.schema, threads=False)  # one request's events: one block of the parser
        self.features = FeatureBuilder(cfg.features, cfg.schema)
        self.holder = ModelHolder(cfg.registry, self.features.names)
        self.counters = _Counters()
        # the per-key baselines advance in request order: decode (its layout memory) and features hold this
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._reloader = Periodic(cfg.serve.reload_poll_s, self.refresh, "isostream-serve-reload")
        self.refresh()

    # -- the model -------------------------------------------------------------------------------------------
    def refresh(self) -> bool:
        """Swap to the version ``CURRENT`` names if it moved (a refused version keeps the old one); never raises."""
        with self._refresh_lock:
            try:
                return self.holder.refresh()
            except Exception:  # noqa: BLE001 - the reloader must outlive a registry it cannot read for a moment
                log.exception("serve: reading the registry %s failed; still scoring with %s",
                              self.cfg.registry, self.holder.version)
                return False

    def start(self) -> None:
        """Poll the registry every ``serve.reload_poll_s`` on a background thread (idempotent)."""
        self._reloader.start()

    def close(self) -> None:
        """Stop the reloader and wait for it."""
        self._reloader.stop()

    def _detector(self) -> Detector:
        det = self.holder.current
        if det is None:
            why = f"; {self.holder.last_error}" if self.holder.last_error else ""
            msg = (f"no model to score with: the registry {self.cfg.registry} has no usable CURRENT version yet"
                   f"{why}")
            raise ServeError(503, msg)
        return det

    # -- scoring ---------------------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """Whether another request is decoding or building features now (a new one would wait for it)."""
        return self._lock.locked()

    def score(self, body: bytes, *, explain: str = "flagged") -> Scored:
        """Score the event or list of events in ``body``; the answer mirrors its shape (object or list).

        Each result is ``{score, threshold, is_anomaly, warm, model_version, attributions}``; attributions (feature
        -> share of the isolation, largest first) for flagged events, all events or none (``explain``). An event
        of a key still warming up (fewer than ``features.warmup_events`` events) is never an anomaly.

        Raises :class:`ServeError`: 400/413 for the body (see :func:`split_events`), 422 naming every invalid
        event (then no event is scored and no baseline moves), 503 while there is no model.
        """
        if explain not in EXPLAIN:
            raise ServeError(400, f"explain must be one of {list(EXPLAIN)}, got {explain!r}")
        det = self._detector()  # once: a swap during this request does not split it
        values, many = split_events(body, self.cfg.serve.max_batch)
        if not values:
            return Scored(b"[]", 0, 0, det.version)
        raw = RawBatch.from_values(values, topic=TOPIC)
        with self._lock:
            decoded = self.decoder.decode(raw)
            if decoded.dead:
                self.counters.rejected += 1
                errors = [{"index": d.offset, "reason": d.reason.value, "detail": d.detail} for d in decoded.dead]
                msg = f"{len(errors)} of {len(values)} events are invalid; none was scored"
                raise ServeError(422, msg, errors)
            feats = self.features.compute(decoded.frame)
        scores = det.score(feats.X)
        threshold = det.threshold
        flagged = (scores > threshold) & feats.warm  # a key whose baseline is still filling cannot alert
        attributions = self._attributions(det, feats.X, flagged, explain)
        version = det.version
        rows = [{"score": s, "threshold": threshold, "is_anomaly": a, "warm": w, "model_version": version,
                 "attributions": e}
                for s, a, w, e in zip(scores.tolist(), flagged.tolist(), feats.warm.tolist(), attributions,
                                      strict=True)]
        body = orjson.dumps(rows if many else rows[0])
        n_flagged = int(np.count_nonzero(flagged))
        with self._lock:
            self.counters.requests += 1
            self.counters.events += len(scores)
            self.counters.anomalies += n_flagged
        return Scored(body, len(scores), n_flagged, version)

    def _attributions(self, det: Detector, X: np.ndarray, flagged: np.ndarray,
                      explain: str) -> list[dict[str, float] | None]:
        """Feature -> share for the rows ``explain`` asks for (largest share first, zero shares left out)."""
        out: list[dict[str, float] | None] = [None] * len(X)
        idx = np.flatnonzero(flagged) if explain == "flagged" else np.arange(len(X) if explain == "all" else 0)
        if not len(idx):
            return out
        shares = det.explain(X[idx])
        order = np.argsort(-shares, axis=1)  # one sort for all rows, not one per row
        names = det.feature_names
        for i, row, cols in zip(idx.tolist(), shares.tolist(), order.tolist(), strict=True):
            out[i] = {names[j]: round(row[j], 4) for j in cols if row[j] > 0}
        return out

    # -- status ------------------------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """``status`` ("ok", or "no_model" while there is none), model version, counts and uptime."""
        c, h = self.counters, self.holder
        return {
            "status": "ok" if h.current is not None else "no_model",
            "model_version": h.version,
            "events_scored": c.events,
            "anomalies": c.anomalies,
            "requests": c.requests,
            "rejected_requests": c.rejected,
            "keys": len(self.features.state.index),
            "uptime_s": round(time.monotonic() - c.started, 3),
            "model_swaps": h.swaps,
            "models_refused": h.refused,
            "last_error": h.last_error,
        }

    def models(self) -> dict[str, Any]:
        """The registry as ``isostream models list --all --json`` gives it (versions, ``CURRENT``, the shadow
        candidate, the history, live label metrics per version), and the version this server scores with."""
        from engine.models_cmd import list_models

        return {"serving": self.holder.version, **list_models(self.cfg, include_online=True)}
