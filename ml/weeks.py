"""ISO weeks (`2026-W47`: Monday 2026-11-16 to Sunday 2026-11-22, UTC), the key of the weekly
report.

The report, its Airflow DAG, the demo and the benches all name a week the same way, and none of
them may depend on the report's heavy modules to do so: this module imports nothing of `ml`, so it
sits at the bottom of the layers and anything may use it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta


@dataclass(frozen=True, order=True)
class Week:
    """An ISO week, Monday to Sunday in UTC."""

    year: int
    week: int

    @classmethod
    def parse(cls, text: str) -> Week:
        m = re.fullmatch(r"(\d{4})-?W(\d{1,2})", text.strip())
        if not m:
            raise ValueError(f"not an ISO week {text!r}: use YYYY-Www, e.g. 2026-W47")
        out = cls(int(m.group(1)), int(m.group(2)))
        date.fromisocalendar(out.year, out.week, 1)  # raises for W53 of a 52-week year
        return out

    @classmethod
    def of(cls, day: date | datetime | str) -> Week:
        """The week containing a day (a datetime is taken in UTC)."""
        if isinstance(day, str):
            day = date.fromisoformat(day[:10])
        if isinstance(day, datetime):
            day = (day.astimezone(UTC) if day.tzinfo else day).date()
        y, w, _ = day.isocalendar()
        return cls(y, w)

    @classmethod
    def last_complete(cls, now: datetime | None = None) -> Week:
        now = now or datetime.now(UTC)
        return cls.of(now - timedelta(days=7))

    @property
    def label(self) -> str:
        return f"{self.year}-W{self.week:02d}"

    @property
    def start(self) -> date:
        return date.fromisocalendar(self.year, self.week, 1)

    @property
    def end(self) -> date:
        """The Monday after (exclusive)."""
        return self.start + timedelta(days=7)

    @property
    def last_day(self) -> date:
        return self.start + timedelta(days=6)

    @property
    def days(self) -> list[str]:
        return [(self.start + timedelta(days=i)).isoformat() for i in range(7)]

    def shift(self, weeks: int) -> Week:
        return Week.of(self.start + timedelta(weeks=weeks))

    def __str__(self) -> str:
        return self.label
