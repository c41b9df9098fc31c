"""Declared event schema: field names, types, required/optional with defaults, event time and key.

The schema lives in ``streams`` because decoding enforces it; the engine's configuration embeds it.
"""

from __future__ import annotations

from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

FieldType = Literal["string", "int", "float", "bool", "timestamp"]

ARROW_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int": pa.int64(),
    "float": pa.float64(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}


class FieldSpec(BaseModel):
    """One declared field of an event."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    type: FieldType
    required: bool = True
    default: Any = None

    @model_validator(mode="after")
    def _optional_needs_no_default_when_required(self) -> FieldSpec:
        if self.required and self.default is not None:
            msg = f"schema field {self.name!r}: a required field cannot have a default ({self.default!r})"
            raise ValueError(msg)
        return self


class EventTime(BaseModel):
    """Which field carries event time and how to read it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    field: str = "event_time"
    # auto: ISO-8601 strings, or numbers read as epoch seconds (< 1e11) or milliseconds
    unit: Literal["auto", "iso", "s", "ms"] = "auto"


class Schema(BaseModel):
    """The declared shape of the input events."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fields: tuple[FieldSpec, ...]
    event_time: EventTime = EventTime()
    key: str | None = None
    max_message_bytes: int = Field(default=1_000_000, gt=0)
    #: message encoding: one JSON object per message, or one CSV record (the declared fields in order, no header)
    format: Literal["json", "csv"] = "json"
    csv_delimiter: str = Field(default=",", min_length=1, max_length=1)

    @model_validator(mode="after")
    def _check_references(self) -> Schema:
        names = [f.name for f in self.fields]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            msg = f"schema.fields: duplicate field names {dupes}"
            raise ValueError(msg)
        if self.event_time.field not in names:
            msg = f"schema.event_time.field: {self.event_time.field!r} is not a declared field ({names})"
            raise ValueError(msg)
        if self.key is not None and self.key not in names:
            msg = f"schema.key: {self.key!r} is not a declared field ({names})"
            raise ValueError(msg)
        return self

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    def field(self, name: str) -> FieldSpec:
        for f in self.fields:
            if f.name == name:
                return f
        msg = f"schema has no field {name!r}"
        raise KeyError(msg)

    def arrow_schema(self) -> pa.Schema:
        """Arrow schema of a decoded batch (event time as UTC timestamp)."""
        out = []
        for f in self.fields:
            t = ARROW_TYPES["timestamp"] if f.name == self.event_time.field else ARROW_TYPES[f.type]
            out.append(pa.field(f.name, t, nullable=not f.required))
        return pa.schema(out)


#: The station-alarm schema of our first users; the generator emits it and configs/demo.yaml declares it.
STATION_ALARM = Schema(
    fields=(
        FieldSpec(name="station_id", type="string"),
        FieldSpec(name="datapoint_id", type="string"),
        FieldSpec(name="alarm_id", type="string", required=False, default=""),
        FieldSpec(name="event_time", type="timestamp"),
        FieldSpec(name="value", type="float"),
        FieldSpec(name="valueThreshold", type="float"),
        FieldSpec(name="isActive", type="bool", required=False, default=False),
    ),
    event_time=EventTime(field="event_time", unit="auto"),
    key="datapoint_id",
)
