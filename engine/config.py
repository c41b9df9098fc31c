"""The one configuration object: YAML file -> validated, immutable, typed config.

Precedence (lowest to highest): defaults in this file, the YAML file, ``ISOSTREAM__SECTION__KEY`` environment
variables, then CLI flags. Every error names the offending key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from streams.schema import STATION_ALARM, Schema
from training.features import FeatureError, FeaturesConfig
from training.retrain import RetrainConfig

ENV_PREFIX = "ISOSTREAM__"


class ConfigError(ValueError):
    """The configuration is invalid; the message names the bad key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Topics(_Section):
    scores: str = "scores"
    alerts: str = "alerts"
    stats: str = "stats"
    dead_letter: str = "dead-letter"
    #: per partition group: throughput, latency, lag, dead letters, model version (see engine/telemetry.py)
    metrics: str = "metrics"
    #: operators' commands to the running engine, e.g. {"action": "swap", "version": "v..."}
    control: str = "control"
    #: one record when an incident opens and one when it closes (engine/incidents.py)
    incidents: str = "incidents"
    #: late ground truth (event key or partition/offset -> label), read by the engine when labels.topic_enabled
    labels: str = "labels"
    #: results of reports the engine's rate trigger submitted
    reports: str = "reports"


class KafkaConfig(_Section):
    bootstrap: str = "127.0.0.1:9092"
    input_topic: str = "events"
    topics: Topics = Topics()
    group_id: str = "isostream"
    #: explicit partitions to assign (immediate); None = all partitions of the input topic
    partitions: tuple[int, ...] | None = None
    #: use consumer-group subscribe (rebalancing) instead of explicit assignment
    subscribe: bool = False
    #: librdkafka settings passed through verbatim to consumers and producers (SASL/SSL etc.)
    settings: dict[str, str | int | float | bool] = Field(default_factory=dict)
    #: secrets kept out of logs and reprs, e.g. {"sasl.password": "..."}
    secrets: dict[str, SecretStr] = Field(default_factory=dict)
    max_batch_messages: int = Field(default=20_000, gt=0)
    max_batch_wait_ms: int = Field(default=200, gt=0)
    #: the scores topic's encoding: one JSON record per event, or one Arrow IPC record per batch (columnar,
    #: ~10x smaller; engine.outputs.decode_scores reads both, and so does the dashboard)
    scores_format: Literal["json", "arrow"] = "json"
    #: where records that fail decoding go as Parquet, besides the dead-letter topic (None = <lake.path>/_dead_letter)
    dead_letter_dir: Path | None = None

    def client_settings(self) -> dict[str, Any]:
        """librdkafka settings common to every client: bootstrap, pass-through settings and secrets."""
        out: dict[str, Any] = {"bootstrap.servers": self.bootstrap}
        out.update(self.settings)
        out.update({k: v.get_secret_value() for k, v in self.secrets.items()})
        return out


class ModelConfig(_Section):
    #: load this model version directory instead of fitting one
    path: Path | None = None
    #: fit the initial model on the first N events when no path is given
    fit_on_first: int = Field(default=5_000, gt=10)
    n_trees: int = Field(default=100, gt=0)
    max_samples: int = Field(default=256, gt=1)
    #: the expected share of anomalies in normal traffic: the threshold is the (1 - contamination) quantile of
    #: the scores of events judged normal (flagged events do not pull it up)
    contamination: float = Field(default=0.01, gt=0.0, lt=0.5)
    #: a fixed score threshold instead of the quantile (null = calibrate)
    fixed_threshold: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int = 0
    #: the model registry: every version the engine fits or publishes, and the CURRENT pointer it follows
    save_dir: Path = Path("models")
    #: how often the coordinator publishes the online-adapted model as a new version that every worker swaps to
    publish_every_s: float = Field(default=10.0, gt=0)
    #: online-adapted versions kept in the registry (~2 MB each for 100 trees); older ones are pruned, never
    #: a fitted/imported base version nor the current one. None keeps all (a replay can then reproduce any score)
    keep_online_versions: int | None = Field(default=1_000, ge=1)
    #: feature rows per micro-batch that each partition group sends to the coordinator to learn from
    learn_sample: int = Field(default=2_048, ge=0)
    #: with fewer than fit_on_first events in the input, fit on what arrived once nothing new came for this long
    fit_idle_s: float = Field(default=3.0, gt=0)


class WindowsConfig(_Section):
    """Per-key event-time windows (see engine/windows.py); results go to the stats topic and lake.windows_path."""

    enabled: bool = True
    size_s: float = Field(default=60.0, gt=0)
    #: null = tumbling windows; else sliding windows that start every slide_s (size_s a multiple of it)
    slide_s: float | None = Field(default=None, gt=0)
    #: the watermark trails the newest event time by this much; windows close when it passes their end
    allowed_lateness_s: float = Field(default=10.0, ge=0)
    #: an event for a closed window: dead_letter (reason late_event) or update (the window is re-emitted)
    late_events: Literal["dead_letter", "update"] = "dead_letter"
    #: with late_events: update, closed windows are kept this long for late events (null = size_s)
    retention_s: float | None = Field(default=None, ge=0)
    #: numeric fields aggregated (mean/min/max/std); null = features.numeric
    fields: tuple[str, ...] | None = None
    #: a bool field whose true values are counted as alarms (e.g. isActive); null = none
    alarm_field: str | None = None
    #: a window-level alert when the share of anomalies / alarms in a closed window exceeds this
    alert_anomaly_rate: float | None = Field(default=None, gt=0, le=1)
    alert_alarm_rate: float | None = Field(default=None, gt=0, le=1)
    #: ... in windows of at least this many events
    min_count: int = Field(default=10, ge=1)


class IncidentsConfig(_Section):
    """Consecutive alerts of one key grouped into one incident (the incidents topic)."""

    enabled: bool = True
    #: an incident closes after this many events of its key in a row without an alert ...
    close_after_events: int = Field(default=8, ge=1)
    #: ... or once the partition's event time is this far past its last alert
    close_after_s: float = Field(default=300.0, gt=0)


class LakeConfig(_Section):
    path: Path = Path("lake")
    #: the time zone whose calendar dates partition the lake (date=YYYY-MM-DD)
    timezone: str = "UTC"
    #: merge a partition's files of one day once it has this many ...
    compact_min_files: int = Field(default=16, ge=2)
    #: ... into files of up to this many rows
    compact_target_rows: int = Field(default=1_000_000, gt=0)
    #: the per-key window results table (null = <path>/windows)
    windows_path: Path | None = None
    #: where batch jobs (retrain, replay, reports) read the lake: a URL (s3://bucket/lake, gs://, hdfs://,
    #: file://) when their workers do not share the engine's disk; null = path
    read_url: str | None = None

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            msg = f"unknown time zone {v!r} (use an IANA name such as 'UTC' or 'Europe/Berlin')"
            raise ValueError(msg) from None
        return v


class ServeConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, gt=0, lt=65536)
    #: clients must send it as the X-API-Key header (null = no key; keep the loopback host then)
    api_key: SecretStr | None = None
    #: how often the server checks the registry's CURRENT pointer
    reload_poll_s: float = Field(default=1.0, gt=0)
    #: most events in one POST /score
    max_batch: int = Field(default=10_000, gt=0)


class ReportsConfig(_Section):
    #: default grouping keys of `isostream report`
    by: tuple[str, ...] = ("station_id",)
    #: the bool field counted as alarms (null = windows.alarm_field)
    alarm_field: str | None = None
    #: when a window alert fires, submit that key's report for the period and publish it on topics.reports
    on_trigger: bool = True
    trigger_period: Literal["day", "week", "month"] = "day"


class LabelsConfig(_Section):
    #: consume kafka.topics.labels in the engine (labels can also be loaded from a file with `isostream labels`)
    topic_enabled: bool = False
    #: where joined labels are kept (null = <lake.path>/_labels)
    path: Path | None = None


class RuntimeConfig(_Section):
    #: exactly_once: one Kafka transaction per commit carries the outputs and the input offsets;
    #: at_least_once: outputs are flushed, then offsets committed (a crash may repeat topic records)
    delivery: Literal["exactly_once", "at_least_once"] = "exactly_once"
    #: how often a partition group makes its work durable: lake files, checkpoint, then the Kafka commit
    commit_interval_ms: int = Field(default=500, gt=0)
    #: write and commit an interval on a thread of its own while the group reads on (one commit at a time,
    #: in order); false = the loop waits for each commit
    commit_in_background: bool = True
    #: input partitions per partition group (one consumer, one producer, one checkpoint); None = spread the
    #: partitions evenly over the workers
    partitions_per_group: int | None = Field(default=None, gt=0)
    #: checkpoints of per-key state and offsets (None = <lake.path>/_state); shared by every worker
    state_dir: Path | None = None
    #: a failing partition group is restarted from its checkpoint this many times in a row before its
    #: pipeline is reported failed (a success resets the count)
    max_restarts: int = Field(default=20, ge=0)
    restart_backoff_s: float = Field(default=1.0, ge=0)
    #: Prometheus text at http://metrics_host:metrics_port/metrics (port None = off, 0 = any free port)
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = Field(default=None, ge=0, lt=65536)
    #: how often each partition group reports progress and metrics to the driver
    report_every_s: float = Field(default=1.0, gt=0)
    #: when the run stops, wait this long for a nightly retrain in progress before leaving it unfinished
    retrain_wait_s: float = Field(default=120.0, ge=0)


class ClusterConfig(_Section):
    #: address of an existing Dask scheduler; None starts a LocalCluster
    scheduler: str | None = None
    n_workers: int = Field(default=2, gt=0)
    threads_per_worker: int = Field(default=1, gt=0)
    processes: bool = True
    backend: Literal["cpu", "gpu"] = "cpu"
    dashboard_address: str = "127.0.0.1:8787"


class DashboardAuth(_Section):
    """Panel's own authentication, passed through to ``panel serve``'s options of the same names."""

    #: a password every viewer types (Panel's basic auth), or a path to a JSON file of {user: password}
    basic_auth: SecretStr | None = None
    #: signs the session cookies; required by basic auth and OAuth
    cookie_secret: SecretStr | None = None
    #: an OAuth provider Panel knows: github, google, azure, gitlab, okta, auth0, generic ...
    oauth_provider: str | None = None
    oauth_key: str | None = None
    oauth_secret: SecretStr | None = None
    oauth_redirect_uri: str | None = None
    oauth_encryption_key: SecretStr | None = None
    oauth_extra_params: dict[str, Any] = Field(default_factory=dict)


class DashboardConfig(_Section):
    enabled: bool = True
    #: the address the server binds: loopback unless you expose it on purpose (then set ``auth``)
    host: str = "127.0.0.1"
    port: int = Field(default=5006, gt=0, lt=65536)
    #: how often the live pages update: one shared tick per server, one row streamed per page and tick
    refresh_ms: int = Field(default=100, ge=20)
    #: seconds of live history the time charts keep: each tick redraws them in every tab, so fewer points
    #: keep the browsers up with the ticks (older data: the History page)
    history_s: int = Field(default=120, gt=0)
    #: browser origins allowed to open the page's websocket besides the bound address (host[:port])
    allow_websocket_origin: list[str] = Field(default_factory=list)
    #: the Dask dashboard linked from the Overview page; null = the engine's LocalCluster address
    dask_url: str | None = None
    #: a session whose browser left (or never finished loading) is ended this long after; not below 5 s: a
    #: busy browser opens its websocket seconds after the page, and Bokeh would build that tab twice
    session_expiry_s: float = Field(default=30.0, ge=5.0)
    #: how often the server gives the C heap's free pages back to the system (glibc's malloc_trim; 0 = never):
    #: without it, a burst's freed pages stay resident and the server's memory steps up over hours
    heap_trim_s: float = Field(default=60.0, ge=0.0)
    #: answer a new tab's page from a cached session and build its own while the browser loads the scripts
    #: (Panel's reuse_sessions="warm"): under load the first plot came ~0.7 s sooner. Off with auth (see docs)
    reuse_sessions: bool = True
    #: a live page that has had no update from the server this long shows a banner saying so (0 = never):
    #: under ten viewers on 2 cores, healthy tabs went at most 3.4 s without a new row
    stale_after_s: float = Field(default=10.0, ge=0.0)
    #: send the Overview's timeline rows over a websocket of their own, encoded once per tick for every tab,
    #: instead of through each tab's Bokeh session (dashboards/push.py says what it measured). Off: the rows
    #: go with the session, with flow control by the browser's acknowledgements
    push_timeline: bool = True
    auth: DashboardAuth = DashboardAuth()

    @field_validator("stale_after_s")
    @classmethod
    def _stale_after(cls, v: float) -> float:
        if 0.0 < v < 1.0:
            msg = "must be 0 (no banner) or at least 1 s: the server sends its beat once a second"
            raise ValueError(msg)
        return v


class Config(_Section):
    """Everything isostream needs to run."""

    kafka: KafkaConfig = KafkaConfig()
    schema_: Schema = Field(default=STATION_ALARM, alias="schema")
    features: FeaturesConfig = FeaturesConfig()
    model: ModelConfig = ModelConfig()
    windows: WindowsConfig = WindowsConfig()
    incidents: IncidentsConfig = IncidentsConfig()
    lake: LakeConfig = LakeConfig()
    cluster: ClusterConfig = ClusterConfig()
    dashboard: DashboardConfig = DashboardConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    retrain: RetrainConfig = RetrainConfig()
    serve: ServeConfig = ServeConfig()
    reports: ReportsConfig = ReportsConfig()
    labels: LabelsConfig = LabelsConfig()
    #: tenants: named pipelines, each the top-level kafka/schema/features/model/lake/windows with its own
    #: overrides (input topic, output topics, lake path and registry must differ); empty = one pipeline
    pipelines: dict[str, dict[str, Any]] = Field(default_factory=dict)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("features")
    @classmethod
    def _nonempty(cls, v: FeaturesConfig) -> FeaturesConfig:
        if not v.numeric:
            msg = "features.numeric must name at least one numeric field"
            raise ValueError(msg)
        return v

    @property
    def schema(self) -> Schema:  # type: ignore[override]
        return self.schema_

    @property
    def state_dir(self) -> Path:
        """Where partition groups checkpoint their state (``runtime.state_dir`` or ``<lake.path>/_state``)."""
        return self.runtime.state_dir if self.runtime.state_dir is not None else self.lake.path / "_state"

    @property
    def dead_letter_dir(self) -> Path:
        """Where dead letters are kept as Parquet (``kafka.dead_letter_dir`` or ``<lake.path>/_dead_letter``)."""
        d = self.kafka.dead_letter_dir
        return d if d is not None else self.lake.path / "_dead_letter"

    def resolved_pipelines(self) -> dict[str, Config]:
        """Every pipeline as a full configuration of its own: ``{"default": self}`` without tenants.

        A tenant inherits the top level and overrides what it names; what it does not name but must not share
        with the others (output topics, lake, registry) is derived from its name.
        """
        if not self.pipelines:
            return {"default": self}
        base = self.model_dump(by_alias=True, exclude={"pipelines"})
        out: dict[str, Config] = {}
        for name, over in self.pipelines.items():
            if not isinstance(over, dict):
                msg = f"pipelines.{name}: must be a mapping of overrides, got {type(over).__name__}"
                raise ConfigError(msg)
            derived: dict[str, Any] = {
                "kafka": {"topics": {k: f"{name}-{v}" for k, v in self.kafka.topics.model_dump().items()
                                     if k != "control"}, "group_id": f"{self.kafka.group_id}-{name}"},
                "lake": {"path": str(self.lake.path / name)},
                "model": {"save_dir": str(self.model.save_dir / name)},
            }
            try:
                cfg = Config.model_validate(_merge(_merge(base, derived), over))
            except ValidationError as err:
                raise ConfigError(_format_error(err, f"pipelines.{name}")) from None
            cfg.check_features_against_schema()
            out[name] = cfg
        _check_distinct(out)
        return out

    def check_features_against_schema(self) -> None:
        try:
            self.features.check_against(self.schema_)
        except FeatureError as err:
            raise ConfigError(str(err)) from None
        names = {f.name: f.type for f in self.schema_.fields}
        w = self.windows
        for name in w.fields or ():
            if names.get(name) not in ("int", "float", "bool"):
                msg = f"windows.fields: {name!r} is not a numeric field of schema.fields ({sorted(names)})"
                raise ConfigError(msg)
        if w.alarm_field is not None and names.get(w.alarm_field) != "bool":
            msg = f"windows.alarm_field: {w.alarm_field!r} is not a bool field of schema.fields ({sorted(names)})"
            raise ConfigError(msg)
        if w.slide_s is not None and (w.slide_s > w.size_s or abs(w.size_s / w.slide_s - round(w.size_s / w.slide_s)) > 1e-9):
            msg = f"windows.slide_s: {w.slide_s} must divide windows.size_s ({w.size_s})"
            raise ConfigError(msg)

    @property
    def lake_url(self) -> str:
        """Where batch jobs read the lake (``lake.read_url`` or ``lake.path``)."""
        return self.lake.read_url if self.lake.read_url is not None else str(self.lake.path)

    @property
    def labels_path(self) -> Path:
        """The label store (``labels.path`` or ``<lake.path>/_labels``)."""
        return self.labels.path if self.labels.path is not None else self.lake.path / "_labels"

    @property
    def registry(self) -> Path:
        """The model registry folder (``model.save_dir``)."""
        return self.model.save_dir

    @property
    def windows_path(self) -> Path:
        """The windows lake table (``lake.windows_path`` or ``<lake.path>/windows``)."""
        return self.lake.windows_path if self.lake.windows_path is not None else self.lake.path / "windows"


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    """``ISOSTREAM__KAFKA__BOOTSTRAP=h:9092`` -> {"kafka": {"bootstrap": "h:9092"}} (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in key[len(ENV_PREFIX) :].split("__") if p]
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = yaml.safe_load(raw) if raw != "" else None
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in over.items():
        merged[k] = _merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


def _format_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for e in err.errors():
        loc = ".".join("schema" if str(p) == "schema_" else str(p) for p in e["loc"]) or "<root>"
        got = e.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {loc}: {e['msg']}{shown}")
    return "\n".join(lines)


def _check_distinct(pipelines: dict[str, Config]) -> None:
    """Tenants must not read or write the same places: name the first clash."""
    seen: dict[tuple[str, str], str] = {}
    for name, cfg in pipelines.items():
        claims = [("kafka.input_topic", cfg.kafka.input_topic), ("lake.path", str(cfg.lake.path)),
                  ("model.save_dir", str(cfg.model.save_dir))]
        claims += [(f"kafka.topics.{k}", v) for k, v in cfg.kafka.topics.model_dump().items() if k != "control"]
        for key, value in claims:
            kind = key.split(".")[0] + (".topic" if key.startswith("kafka") else "")
            other = seen.setdefault((kind, value), name)
            if other != name:
                msg = f"pipelines.{name}.{key}: {value!r} is already used by pipeline {other!r}"
                raise ConfigError(msg)


def from_dict(data: dict[str, Any], *, source: str = "<dict>") -> Config:
    """Validate a plain mapping into a :class:`Config` (tenants included)."""
    try:
        cfg = Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source)) from None
    cfg.check_features_against_schema()
    cfg.resolved_pipelines()
    return cfg


def load(
    path: str | os.PathLike[str] | None = None,
    *,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Config:
    """Load the YAML file at ``path`` (or defaults), apply env-var and explicit overrides, validate.

    >>> load(overrides={"kafka": {"bootstrap": "127.0.0.1:19092"}}, environ={}).kafka.bootstrap
    '127.0.0.1:19092'
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            msg = f"config file not found: {p}"
            raise ConfigError(msg)
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            msg = f"config file {p} is not valid YAML: {err}"
            raise ConfigError(msg) from None
        if not isinstance(loaded, dict):
            msg = f"config file {p}: top level must be a mapping, got {type(loaded).__name__}"
            raise ConfigError(msg)
        data, source = loaded, str(p)
    data = _merge(data, _env_overrides(dict(os.environ) if environ is None else environ))
    data = _merge(data, overrides or {})
    return from_dict(data, source=source)


def with_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """A copy of ``cfg`` with nested overrides applied and re-validated."""
    return from_dict(_merge(cfg.model_dump(by_alias=True), overrides), source="overrides")
