"""The promotion gate: does a candidate replace the champion? One pure function, used by the retrain (no
shadow period), the engine (after the shadow period) and ``isostream models promote --check``.

With labels on events of both classes, the candidate's average precision and ROC AUC may fall at most
``gate_max_metric_drop`` (or twice the metric's standard error on that many labelled anomalies, if larger)
below the champion's, both measured on the same recomputed features of the retrain day. Without, it must alert at a rate within ``[gate_alert_rate_min,
gate_alert_rate_max]`` and agree with the champion (both alert or neither) on at least ``gate_min_agreement`` of
the events, the latter only while the champion itself alerts within those bounds: agreeing with a champion
that alerts on a drift it does not know is no virtue. Every decision says why.

>>> from training.retrain import RetrainConfig
>>> decide(RetrainConfig(), {"candidate_ap": 0.80, "champion_ap": 0.70, "candidate_auc": 0.95,
...                          "champion_auc": 0.93}).promote
True
>>> d = decide(RetrainConfig(), {"agreement": 0.90, "candidate_alert_rate": 0.01})
>>> d.promote, d.reason
(False, 'agreement 0.900 < 0.980 with the champion')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


class GateSettings(Protocol):
    gate_min_agreement: float
    gate_alert_rate_min: float
    gate_alert_rate_max: float
    gate_max_metric_drop: float


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    metrics: dict[str, Any] = field(default_factory=dict)


def noise_margin(metric: float, positives: int) -> float:
    """Twice the standard error of a rate-like metric measured on ``positives`` labelled anomalies.

    A few hundred labelled anomalies measure AP to a few hundredths: the gate does not refuse a candidate for a
    difference the labels cannot tell from noise (binomial approximation, ``sqrt(m (1 - m) / n)``).

    >>> round(noise_margin(0.8, 100), 3), noise_margin(0.8, 0)
    (0.08, 1.0)
    """
    if positives <= 0:
        return 1.0
    return 2.0 * (max(metric * (1.0 - metric), 0.0) / positives) ** 0.5


def _labelled(m: dict[str, Any]) -> bool:
    return all(isinstance(m.get(k), (int, float)) for k in ("candidate_ap", "champion_ap", "candidate_auc",
                                                            "champion_auc"))


def decide(s: GateSettings, offline: dict[str, Any], shadow: dict[str, Any] | None = None) -> Decision:
    """Apply the gate to the offline evaluation and (when given) the live shadow statistics.

    Labelled metrics come from the offline evaluation; agreement and alert rate from the shadow period when
    there was one (live traffic the candidate never saw), else from the offline evaluation.
    """
    live = shadow if shadow and shadow.get("events") else None
    used: dict[str, Any] = {}
    fails: list[str] = []
    if _labelled(offline):
        positives = int(offline.get("labelled_anomalies") or 0)
        for k in ("ap", "auc"):
            cand, champ = float(offline[f"candidate_{k}"]), float(offline[f"champion_{k}"])
            used[f"candidate_{k}"], used[f"champion_{k}"] = cand, champ
            allowed = max(s.gate_max_metric_drop, noise_margin(champ, positives))
            if cand < champ - allowed:
                fails.append(f"{k.upper()} {cand:.3f} < champion {champ:.3f} - {allowed:.3f}")
        basis = "labels"
    else:
        src = live if live is not None else offline
        agreement, rate = src.get("agreement"), src.get("candidate_alert_rate")
        if agreement is None or rate is None:
            return Decision(False, "no evaluation to decide on (no labelled events, no agreement measured)")
        used.update(agreement=float(agreement), candidate_alert_rate=float(rate))
        champ_rate = src.get("champion_alert_rate")
        champion_sane = champ_rate is None or s.gate_alert_rate_min <= champ_rate <= s.gate_alert_rate_max
        if champ_rate is not None:
            used["champion_alert_rate"] = float(champ_rate)
        # agreeing with a champion that alerts out of bounds (a drift it does not know) is no virtue
        if champion_sane and agreement < s.gate_min_agreement:
            fails.append(f"agreement {agreement:.3f} < {s.gate_min_agreement:.3f} with the champion")
        if not s.gate_alert_rate_min <= rate <= s.gate_alert_rate_max:
            fails.append(f"alert rate {rate:.4f} outside [{s.gate_alert_rate_min:g}, {s.gate_alert_rate_max:g}]")
        basis = "shadow traffic" if live is not None else "the retrain day"
    if fails:
        return Decision(False, "; ".join(fails), used)
    summary = ", ".join(f"{k} {v:.3f}" for k, v in used.items())
    return Decision(True, f"gate passed on {basis}: {summary}", used)
