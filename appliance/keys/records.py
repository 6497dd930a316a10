"""What the key store holds and hands out: records, daily usage, errors, field validation."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import date, datetime, timezone

from appliance.keys.networks import address_in, parse_networks

BUDGET_PERIODS = ("day", "month")
LIMIT_FIELDS = ("rpm_limit", "tpm_limit", "budget_tokens")
UPDATABLE = ("name", *LIMIT_FIELDS, "budget_period", "expires_at", "allowed_models", "allowed_networks", "priority",
             "weight")
JSON_COLUMNS = ("allowed_models", "allowed_networks")


class AuthError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class KeyNotFound(Exception):
    pass


class KeyStoreError(Exception):
    """The database could not be opened or created (permissions, disk, not a database)."""


class KeyStoreUnavailable(Exception):
    """The database cannot be reached right now and nothing recent vouches for the key: a 503."""

    def __init__(self, retry_after_s: float, message: str):
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.message = message


PURPOSES = ("api", "fleet-probe")  # fleet-probe: the gateway's probes of a box (GET /v1/models), nothing else


@dataclass
class KeyRecord:
    id: str
    name: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    rpm_limit: int | None
    tpm_limit: int | None
    budget_tokens: int | None
    budget_period: str
    allowed_models: list[str] | None
    last_used_at: datetime | None
    allowed_networks: list[str] | None = None  # CIDRs the key may be used from; None: anywhere
    priority: int = 0  # its requests' default priority: lower runs first (a request's own `priority` wins)
    weight: float = 1.0  # its share of the engine among keys of equal priority, against the others' weights
    purpose: str = "api"  # one of PURPOSES

    def status(self, now: datetime) -> str:
        """'active', 'revoked' or 'expired'."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def allows_address(self, address: str | None) -> bool:
        return self.allowed_networks is None or address_in(address, self.allowed_networks)

    def to_dict(self) -> dict:
        # The secret and its hash never get here: a KeyRecord does not hold them.
        out = asdict(self)
        for name in ("created_at", "expires_at", "revoked_at", "last_used_at"):
            out[name] = iso(out[name])
        out["status"] = self.status(utcnow())
        return out

    @classmethod
    def from_row(cls, row, last_used_at: datetime | None) -> KeyRecord:
        return cls(
            id=row["id"],
            name=row["name"],
            created_at=parse_dt(row["created_at"]),
            expires_at=parse_dt(row["expires_at"]),
            revoked_at=parse_dt(row["revoked_at"]),
            rpm_limit=row["rpm_limit"],
            tpm_limit=row["tpm_limit"],
            budget_tokens=row["budget_tokens"],
            budget_period=row["budget_period"],
            allowed_models=json.loads(row["allowed_models"]) if row["allowed_models"] is not None else None,
            last_used_at=last_used_at,
            allowed_networks=json.loads(row["allowed_networks"]) if row["allowed_networks"] is not None else None,
            priority=row["priority"],
            weight=row["weight"],
            purpose=row["purpose"],
        )


@dataclass
class DayUsage:
    day: date
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def to_dict(self) -> dict:
        return {**asdict(self), "day": self.day.isoformat()}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def parse_dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value is not None else None


def as_utc(value: datetime) -> datetime:
    # A naive datetime is taken as UTC: everything in the store is UTC.
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def validate_limits(fields: dict) -> dict:
    """Check and normalise key fields; raises ValueError naming the offending field."""
    out = {}
    for name, value in fields.items():
        if name not in UPDATABLE:
            raise ValueError(f"unknown field {name!r}; expected one of {', '.join(UPDATABLE)}")
        if name == "name":
            if not isinstance(value, str) or not value.strip():
                raise ValueError("name must be a non-empty string")
            value = value.strip()
        elif name in LIMIT_FIELDS:
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a non-negative integer or None (no limit), got {value!r}")
        elif name == "budget_period":
            if value not in BUDGET_PERIODS:
                raise ValueError(f"budget_period must be one of {', '.join(BUDGET_PERIODS)}, got {value!r}")
        elif name == "expires_at":
            if value is not None and not isinstance(value, datetime):
                raise ValueError(f"expires_at must be a datetime or None, got {value!r}")
            value = as_utc(value) if value is not None else None
        elif name == "allowed_models":
            value = _validate_models(value)
        elif name == "allowed_networks":
            value = parse_networks(value)
        elif name == "priority":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"priority must be an integer (lower runs first), got {value!r}")
        elif name == "weight":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1000:
                raise ValueError(f"weight must be a number above 0 and at most 1000, got {value!r}")
            value = float(value)
        out[name] = value
    return out


def _validate_models(value) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str) or not all(isinstance(m, str) and m.strip() for m in value):
        raise ValueError("allowed_models must be a list of model names, or None for every model")
    models = [m.strip() for m in value]
    if not models:
        raise ValueError("allowed_models must name at least one model, or be None for every model")
    return models


def to_column(name: str, value):
    """A validated field as stored in its SQLite column."""
    if name in JSON_COLUMNS:
        return json.dumps(value) if value is not None else None
    if name == "expires_at":
        return iso(value)
    return value
