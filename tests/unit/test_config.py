from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from engine.config import Config, ConfigError, load, with_overrides

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "configs" / "demo.yaml"


def test_demo_config_loads_and_matches_schema_defaults() -> None:
    cfg = load(DEMO, environ={})
    assert cfg.kafka.input_topic == "events"
    assert cfg.schema.key == "datapoint_id"
    assert cfg.schema.event_time.field == "event_time"
    assert cfg.cluster.backend == "cpu"


def test_every_schema_key_appears_in_the_demo_config() -> None:
    """The worked example documents every section and key of the schema."""
    data = yaml.safe_load(DEMO.read_text())
    for section, model in Config.model_fields.items():
        name = model.alias or section
        assert name in data, f"configs/demo.yaml lacks section {name!r}"
        sub = model.annotation
        if hasattr(sub, "model_fields") and name != "schema":
            missing = set(sub.model_fields) - set(data[name])
            assert not missing, f"configs/demo.yaml section {name!r} lacks keys {sorted(missing)}"


def test_every_key_is_documented() -> None:
    doc = (REPO / "docs" / "configuration.md").read_text()
    for section, model in Config.model_fields.items():
        sub = model.annotation
        for key in getattr(sub, "model_fields", {}):
            assert f"`{key}`" in doc, f"docs/configuration.md does not document {section}.{key}"


def test_unknown_key_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kafka:\n  bootstrapp: x:1\n")
    with pytest.raises(ConfigError, match=r"kafka\.bootstrapp"):
        load(bad, environ={})


def test_wrong_type_is_named_with_value(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster:\n  n_workers: many\n")
    with pytest.raises(ConfigError, match=r"cluster\.n_workers.*'many'"):
        load(bad, environ={})


def test_unknown_backend_rejected() -> None:
    with pytest.raises(ConfigError, match=r"cluster\.backend"):
        load(overrides={"cluster": {"backend": "tpu"}}, environ={})


def test_stale_banner_delay_is_off_or_at_least_the_beat() -> None:
    assert load(overrides={"dashboard": {"stale_after_s": 0}}, environ={}).dashboard.stale_after_s == 0.0
    assert load(environ={"ISOSTREAM__DASHBOARD__STALE_AFTER_S": "30"}).dashboard.stale_after_s == 30.0
    with pytest.raises(ConfigError, match=r"dashboard\.stale_after_s.*once a second"):
        load(overrides={"dashboard": {"stale_after_s": 0.5}}, environ={})


def test_feature_must_be_declared_numeric() -> None:
    with pytest.raises(ConfigError, match="station_id"):
        load(overrides={"features": {"numeric": ["station_id"]}}, environ={})


def test_schema_key_must_be_declared() -> None:
    with pytest.raises(ConfigError, match=r"schema"):
        load(overrides={"schema": {"fields": [{"name": "t", "type": "timestamp"}],
                                   "event_time": {"field": "t"}, "key": "nope"},
                        "features": {"numeric": ["t"], "ratio": None}}, environ={})


def test_env_overrides_yaml_and_flags_override_env() -> None:
    env = {"ISOSTREAM__KAFKA__BOOTSTRAP": "envhost:9092", "ISOSTREAM__CLUSTER__N_WORKERS": "3"}
    cfg = load(DEMO, environ=env)
    assert cfg.kafka.bootstrap == "envhost:9092"
    assert cfg.cluster.n_workers == 3
    cfg = load(DEMO, environ=env, overrides={"kafka": {"bootstrap": "flag:1"}})
    assert cfg.kafka.bootstrap == "flag:1"


def test_secrets_pass_through_but_do_not_print() -> None:
    cfg = load(overrides={"kafka": {"settings": {"security.protocol": "SASL_SSL"},
                                    "secrets": {"sasl.password": "hunter2"}}}, environ={})
    assert cfg.kafka.client_settings()["sasl.password"] == "hunter2"
    assert cfg.kafka.client_settings()["security.protocol"] == "SASL_SSL"
    assert "hunter2" not in repr(cfg)


def test_config_is_immutable_and_with_overrides_revalidates() -> None:
    cfg = load(environ={})
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen error type varies by version
        cfg.kafka.bootstrap = "x"  # type: ignore[misc]
    assert with_overrides(cfg, {"lake": {"path": "elsewhere"}}).lake.path == Path("elsewhere")
    with pytest.raises(ConfigError):
        with_overrides(cfg, {"lake": {"nope": 1}})


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load(tmp_path / "absent.yaml", environ={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("kafka: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(bad, environ={})
