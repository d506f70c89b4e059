"""Service settings from RXGATE_* environment variables or a `.env` file. Every one has a safe default."""

from __future__ import annotations

import logging
from functools import cached_property
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger("rxgate")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RXGATE_", env_file=".env", extra="ignore")

    timezone: str = "UTC"  # the zone of timestamps sent without an offset; set it to the hospital's
    protocol: str = "go-rr-9mg-d1-d14"  # bundled protocol id or file path: the default protocol
    protocol_field: str = "RXE-27"  # where an order may name its protocol: RXE-27, ORC-4 (prefix) or NTE
    database_url: str = "sqlite:///var/rxgate.db"
    broker_url: str = ""  # empty: redis://127.0.0.1:6379/0, else an embedded Redis under ./var/; amqp://: RabbitMQ
    stream_url: str = ""  # the streams' (and MLLP's) Redis; empty: the Redis broker (with RabbitMQ: as broker_url empty)
    result_backend: str = ""  # Celery results; empty: the streams' Redis; or a Celery backend URL (db+postgresql://...)
    amqp_delivery_limit: int = 10  # RabbitMQ quorum queue x-delivery-limit; above error_retries (then dead-lettered)
    embedded: bool = False  # force the embedded Redis
    var_dir: str = "var"
    audit_token_sha256: str = ""
    # the audit chain's HMAC key(s), kept outside the database (docs/interfaces.md §4); no default: writing
    # or verifying the audit log without one is an error naming these. Whitespace-separated, the last signs.
    audit_key: SecretStr = SecretStr("")
    audit_key_file: str = ""  # a file of keys, one a line, oldest first (`make run` makes var/audit.key)
    max_message_bytes: int = 1_048_576  # larger messages are answered AR hl7.size
    max_segments: int = 5_000
    max_repetitions: int = 1_000  # repetitions of any one field

    @property
    def limits(self):
        from validator.reader import Limits

        return Limits(self.max_message_bytes, self.max_segments, self.max_repetitions)
    log_level: str = "INFO"
    # --- queue service (workers/queue/celery_app.py, workers/queue/bridge.py); seconds unless named otherwise ---
    visibility_timeout: float = 300  # Redis redelivers an unacked Celery task after this; > one attempt + retry_max_delay
    unacked_restore_interval: int = 10  # kombu: seconds between sweeps for unacked messages past the visibility timeout
    unacked_restore_throttle: int = 10  # kombu: only every Nth sweep scans Redis (period = interval x throttle)
    prefetch_multiplier: int = 1  # tasks reserved per worker process (1-4); 1 keeps a kill -9 from stranding many
    worker_concurrency: int = 0  # Celery worker processes; 0 = number of CPUs
    result_expires: float = 86400  # Celery results kept in Redis this long
    retry_budget: float = 360  # transient faults (database/broker down) are retried this long before giving up
    retry_initial_delay: float = 1.0  # first backoff delay, doubled per attempt
    retry_max_delay: float = 60.0  # backoff cap (kept far below visibility_timeout: Redis ETAs, celery #2481)
    error_retries: int = 2  # attempts after a non-transient exception (a bug) before dead-lettering
    stream_prefix: str = "rxgate"  # streams <prefix>:inbound / :outbound / :deadletter
    stream_group: str = "rxgate"  # consumer group on <prefix>:inbound
    consumer_name: str = ""  # empty: <hostname>-<pid>
    stream_batch: int = 100  # entries per XREADGROUP
    store_batch: int = 100  # bridge: entries whose audit records are written in one transaction; 1 = one each
    store_batch_seconds: float = 0.02  # bridge: a transaction is written (and its entries answered) at least this often
    stream_block_ms: int = 1000  # XREADGROUP block time
    claim_idle: float = 60.0  # XAUTOCLAIM entries another consumer left pending this long
    heartbeat_ttl: float = 5.0  # a bridge's heartbeat key lives this long: a consumer without one is dead, its entries taken over
    outbound_maxlen: int = 1_000_000  # MAXLEN ~ on rxgate:outbound (inbound and deadletter are never trimmed)
    submit_timeout: float = 30.0  # `rxgate submit`: seconds to wait for each response
    audit_api_port: int = 8080  # `rxgate serve` runs the audit API here when workers.http.app exists
    audit_api_host: str = "127.0.0.1"
    http_tls_cert: str = ""  # PEM certificate (chain): the HTTP API (audit, /hl7, CDS Hooks) serves HTTPS only
    http_tls_key: str = ""  # its PEM private key
    # --- MLLP listener (workers/queue/mllp.py, `rxgate mllp`) ---
    mllp_host: str = "127.0.0.1"  # 0.0.0.0 to accept interface engines on other hosts
    mllp_port: int = 2575
    mllp_timeout: float = 30.0  # seconds before an unanswered message gets AR rxgate.timeout; < the sender's ACK timeout
    mllp_max_frame: int = 10_000_000  # bytes; a larger frame is refused (AR) and its connection closed
    mllp_tls_cert: str = ""  # PEM certificate (chain): the listener speaks MLLP over TLS 1.2+ only
    mllp_tls_key: str = ""  # its PEM private key
    mllp_tls_client_ca: str = ""  # PEM CA: only clients presenting a certificate it signed are served (mutual TLS)
    # enhanced mode (MSH-15/16): application responses go to the sender's reply address (workers/queue/replies.py)
    mllp_reply_to: str = ""  # "MSH-3^MSH-4=host:port,..."; a sender not named gets its responses on the streams only
    mllp_reply_budget: float = 3600.0  # seconds from receipt within which a reply must be delivered, else given up
    mllp_reply_initial_delay: float = 1.0  # first back-off delay after a failed delivery, doubled per attempt
    mllp_reply_max_delay: float = 60.0  # back-off cap
    mllp_reply_ack_timeout: float = 30.0  # seconds to connect, and for the peer to acknowledge a reply
    mllp_reply_tls_ca: str = ""  # PEM CA: replies go over TLS to peers presenting a certificate it signed
    mllp_reply_tls_cert: str = ""  # rxgate's client certificate for peers that require mutual TLS
    mllp_reply_tls_key: str = ""
    # --- CDS Hooks order-sign (workers/http/cds.py, on the audit API's port) ---
    cds_issuers: str = ""  # "issuer=jwks_url_or_key_file,...": the CDS clients trusted; empty: every call is 401
    cds_base_url: str = ""  # the public base URL the JWT aud is checked against (behind a proxy); empty: as invoked
    cds_fhir_timeout: float = 10.0  # seconds per request to a client's fhirServer (and to a JWKS URL)
    # --- metrics (workers/metrics.py) ---
    metrics_dir: str = ""  # prometheus multiprocess directory; empty: <var_dir>/metrics; "off": per-process only
    # --- broker failover: Redis Sentinel (workers/queue/celery_app.py, docs/scale-out.md) ---
    broker_sentinels: str = ""  # "host1:26379,host2:26379,host3:26379": use Sentinel instead of broker_url
    broker_sentinel_master: str = "mymaster"  # the master name the sentinels monitor
    broker_sentinel_db: int = 0
    broker_sentinel_password: str = ""  # password of the Redis servers (not of the sentinels)
    broker_sentinel_sentinel_password: str = ""  # password of the sentinels themselves, if they require one
    broker_sentinel_socket_timeout: float = 5.0

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r} (use an IANA name such as America/New_York)") from exc
        return value

    @field_validator("cds_issuers")
    @classmethod
    def _usable_issuers(cls, value: str) -> str:
        if value.strip():
            # a key file that cannot be read is a start-up error naming it (IssuerConfigError is a ValueError)
            from workers.http.cds_auth import parse_issuers

            parse_issuers(value)
        return value

    def chain_keys(self):
        """The audit chain's keys (workers.store.chain.ChainKeys) from RXGATE_AUDIT_KEY or
        RXGATE_AUDIT_KEY_FILE; `ChainKeyError` naming them when neither (or both) is set or unusable."""
        from pathlib import Path

        from workers.store.chain import ChainKeyError, ChainKeys

        inline, path = self.audit_key.get_secret_value(), self.audit_key_file
        if inline and path:
            raise ChainKeyError("set RXGATE_AUDIT_KEY or RXGATE_AUDIT_KEY_FILE, not both")
        if inline:
            return ChainKeys.parse(inline, "RXGATE_AUDIT_KEY")
        if path:
            try:
                text = Path(path).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ChainKeyError(f"RXGATE_AUDIT_KEY_FILE {path}: cannot be read ({type(exc).__name__})") from None
            return ChainKeys.parse(text, f"RXGATE_AUDIT_KEY_FILE {path}")
        raise ChainKeyError(
            "no audit key: set RXGATE_AUDIT_KEY or RXGATE_AUDIT_KEY_FILE (the HMAC key of the audit chain, kept "
            "outside the database; `make run` makes var/audit.key)")

    @model_validator(mode="after")
    def _queue_timing(self):
        # (RXGATE_VISIBILITY_TIMEOUT against RXGATE_RETRY_MAX_DELAY: celery_app.make_app warns, see there)
        if self.amqp_delivery_limit <= self.error_retries:
            raise ValueError(f"RXGATE_AMQP_DELIVERY_LIMIT ({self.amqp_delivery_limit}) must be above "
                             f"RXGATE_ERROR_RETRIES ({self.error_retries})")
        return self

    @cached_property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def warn_if_default_zone(self) -> None:
        if self.timezone == "UTC":
            log.warning(
                "RXGATE_TIMEZONE is left at UTC: timestamps without an offset are read as UTC, so an evening "
                "dose in a UTC-5 hospital lands on the next calendar day. Set it to the hospital's zone."
            )
