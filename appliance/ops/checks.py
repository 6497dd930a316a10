"""What every health check returns: a status, a message a person can act on, and details."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

OK, WARN, FAIL, NA = "ok", "warn", "fail", "n/a"


@dataclass
class Check:
    name: str
    status: str
    message: str
    details: dict = field(default_factory=dict)


@dataclass
class Report:
    checked_at: str
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    def to_dict(self) -> dict:
        return {"checked_at": self.checked_at, "ok": self.ok, "checks": [asdict(c) for c in self.checks]}
