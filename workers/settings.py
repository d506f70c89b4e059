"""Service settings from RXGATE_* environment variables or a `.env` file. Every one has a safe default."""

from __future__ import annotations

import logging
from functools import cached_property
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger("rxgate")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RXGATE_", env_file=".env", extra="ignore")

    timezone: str = "UTC"  # the zone of timestamps sent without an offset; set it to the hospital's
    protocol: str = "go-rr-9mg-d1-d14"  # bundled protocol id or file path
    database_url: str = "sqlite:///var/rxgate.db"
    broker_url: str = ""  # empty: redis://127.0.0.1:6379/0, else an embedded Redis under ./var/
    embedded: bool = False  # force the embedded Redis
    var_dir: str = "var"
    audit_token_sha256: str = ""
    log_level: str = "INFO"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r} (use an IANA name such as America/New_York)") from exc
        return value

    @cached_property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def warn_if_default_zone(self) -> None:
        if self.timezone == "UTC":
            log.warning(
                "RXGATE_TIMEZONE is left at UTC: timestamps without an offset are read as UTC, so an evening "
                "dose in a UTC-5 hospital lands on the next calendar day. Set it to the hospital's zone."
            )
