"""One frozen settings object for every process RebateGuard runs.

`os.environ` is read here and nowhere else. Every field has an environment variable named
``RG_<FIELD>`` (upper case); the table in the README is generated from `SETTINGS_DOC`.
The same code points at the embedded local stack or at a production Kafka cluster and Redis
only through these values.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detectors.base import LEARNERS
from rebate_guard.contract.time import DAY_MS, MINUTE_MS

if TYPE_CHECKING:
    from detectors.risk import RiskModel
    from features.engine import EngineConfig
    from graph.layer import GraphConfig
    from rebate_guard.core.policy import Policy


#: Where `Settings.with_api_token` keeps a generated token, under `RG_DATA_DIR`.
API_TOKEN_FILE = "api-token"
#: The console's users file under `RG_DATA_DIR` when `RG_CONSOLE_USERS_FILE` is not set.
CONSOLE_USERS_FILE = "console-users.json"


class SettingsError(ValueError):
    """An environment variable holds a value that cannot be used."""


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap: str = field(
        default="127.0.0.1:9092",
        metadata=_doc("Kafka bootstrap servers, comma separated host:port."),
    )
    redis_url: str = field(
        default="redis://127.0.0.1:6379/0",
        metadata=_doc("Redis URL for serving state (decisions by tx_id, stats)."),
    )
    app_id: str = field(
        default="rebate-guard",
        metadata=_doc("Faust application id: the consumer group and internal topic prefix."),
    )
    topic_prefix: str = field(
        default="",
        metadata=_doc("Prefix for every topic name (e.g. `prod.`), to share a cluster."),
    )
    partitions: int = field(
        default=4,
        metadata=_doc(
            "Partitions of every topic RebateGuard creates; the input topics must have "
            "exactly this many (the worker checks), and it bounds how many workers share "
            "the work."
        ),
    )
    replication_factor: int = field(
        default=1,
        metadata=_doc("Replication factor of topics RebateGuard creates (3 in production)."),
    )
    batch_max: int = field(
        default=1000,
        metadata=_doc("Most events the worker scores in one batch."),
    )
    consumer_fetch_wait_ms: int = field(
        default=10,
        metadata=_doc(
            "Longest a consumer fetch waits on the broker for new data. Kafka answers as "
            "soon as data arrives, so there this only bounds idle polling (Faust's fixed "
            "value is 1500); Tansu waits the whole time on a quiet partition, so each hop "
            "through the broker costs up to this much decision latency."
        ),
    )
    batch_within_s: float = field(
        default=0.05,
        metadata=_doc("Longest the worker waits to fill a batch, in seconds."),
    )
    decision_ttl_s: int = field(
        default=35 * 24 * 3600,
        metadata=_doc(
            "How long a decision is kept in Redis by tx_id; redeliveries within it are "
            "answered with the stored decision (idempotency horizon)."
        ),
    )
    web_host: str = field(
        default="127.0.0.1",
        metadata=_doc("Interface the worker's web server (status page, API) binds to."),
    )
    web_port: int = field(
        default=6066,
        metadata=_doc("Port of the worker's web server."),
    )
    api_token: str = field(
        default="",
        repr=False,
        metadata=_doc(
            "The secret every request to the worker's web server carries as "
            "`Authorization: Bearer <token>` (`POST /score`, `/decisions/`, `/api/`, Faust's "
            "pages). Empty: the one in `<RG_DATA_DIR>/api-token`, created at random (mode "
            "0600) if missing. Give every worker of a deployment the same one."
        ),
    )
    console_user: str = field(
        default="admin",
        metadata=_doc(
            "User name of the bootstrap console login, role `admin` (the others are in "
            "`RG_CONSOLE_USERS_FILE`)."
        ),
    )
    console_password: str = field(
        default="",
        repr=False,
        metadata=_doc(
            "Password of the bootstrap console login; empty: the API token. Changing it ends "
            "every console session."
        ),
    )
    console_users_file: str = field(
        default="",
        metadata=_doc(
            "The console's users with their roles (`viewer`, `reviewer`, `admin`) and scrypt "
            "password hashes, managed with `rebate-guard users`; workers re-read it when it "
            "changes. Empty: `<RG_DATA_DIR>/console-users.json`."
        ),
    )
    faust_web_pages: bool = field(
        default=False,
        metadata=_doc(
            "Serve Faust's own `/router/` and `/table/` pages (behind the token like the "
            "rest). RebateGuard uses neither: off, they are not served."
        ),
    )
    broker_session_timeout_s: float = field(
        default=6.0,
        metadata=_doc(
            "Consumer group session timeout. Tansu finishes joins only after half of it, "
            "so the local default is short; 30-45 is usual on a Kafka cluster."
        ),
    )
    broker_heartbeat_interval_s: float = field(
        default=1.0,
        metadata=_doc("Consumer group heartbeat interval, in seconds."),
    )
    broker_rebalance_timeout_s: float = field(
        default=6.0,
        metadata=_doc("Consumer group rebalance timeout, in seconds."),
    )
    data_dir: Path = field(
        default=Path(".rebate-guard"),
        metadata=_doc("Where the local stack, Faust and checkpoints keep their files."),
    )
    log_level: str = field(
        default="info",
        metadata=_doc("Log level of the worker: debug, info, warning, error."),
    )
    simulate_rate: float = field(
        default=500.0,
        metadata=_doc(
            "Events per second (transactions, signups, labels) `rebate-guard up` back-fills "
            "its simulated platform's history at, until it catches up with the clock (and "
            "`simulate --produce` feeds at)."
        ),
    )
    simulate_live_rate: float = field(
        default=0.2,
        metadata=_doc(
            "Payments per second of `rebate-guard up`'s live traffic once its back-fill has "
            "caught up with the clock: stamped with the clock, in real time, each asking "
            "`POST /score`. The simulated platform is sized to it (0.3 payments per user a "
            "day: 0.2/s is ~58k users, whose signups make most of the back-fill)."
        ),
    )
    checkpoint_interval_s: float = field(
        default=30.0,
        metadata=_doc(
            "How often the worker checkpoints its state with its input offsets to Redis; "
            "input is acknowledged only once a checkpoint covers it, and after a crash the "
            "work since the last one is redone. Each checkpoint is written by a forked child; "
            "most write only what changed since the one before (`RG_CHECKPOINT_FULL_EVERY`)."
        ),
    )
    checkpoint_full_every: int = field(
        default=5,
        metadata=_doc(
            "Every how many checkpoints of a user or entity shard one pickles its whole state; "
            "those between write only the keys changed since the one before (a delta: 1,000 "
            "events after a 100k-event state, 7x fewer bytes and 2x less CPU; "
            "benchmarks/README.md). A restore reads the last full one and its deltas (each "
            "delta adds ~20-30% of a full restore), so this bounds its cost. 1: every "
            "checkpoint is full."
        ),
    )
    allowed_lateness_ms: int = field(
        default=2000,
        metadata=_doc(
            "How far out of event-time order one input partition may deliver; events later "
            "than that are processed on arrival and counted as late."
        ),
    )
    source_idle_s: float = field(
        default=2.0,
        metadata=_doc(
            "A partition silent this long stops holding back event time (e.g. a quiet labels "
            "partition); it rejoins when it delivers again."
        ),
    )
    log_features: bool = field(
        default=False,
        metadata=_doc(
            "Publish every transaction's feature vector to the `features` topic (the training "
            "log). About 5x the bytes of the decisions: it cost ~30% of worker throughput on "
            "the shared 2-core local stack (benchmarks/README.md)."
        ),
    )
    console_index: bool = field(
        default=True,
        metadata=_doc(
            "Keep the console's views in Redis as decisions are stored: money over time, the "
            "review queue of held payments, each user's, merchant's and device's recent "
            "decisions, labels, and the decision history policy backtests replay. One Lua "
            "call per batch; off, the console shows only rings, policy and audit."
        ),
    )
    console_history_keep: int = field(
        default=200_000,
        metadata=_doc(
            "How many of the newest payment decisions the console keeps, with what the policy "
            "saw, for backtesting a policy draft (~300 bytes each in Redis)."
        ),
    )
    local_utc_offset_minutes: int = field(
        default=0,
        metadata=_doc(
            "The platform's local time minus UTC, in minutes (480 for China), for the night "
            "and weekend features."
        ),
    )
    graph: bool = field(
        default=True,
        metadata=_doc(
            "Run ring detection: a graph shard (on the worker owning partition 0) reads every "
            "signup and transaction, publishes rings on the `rings` topic and ring scores in "
            "Redis, which every decision reads. Off: no ring evidence (referral depth stays a "
            "classifier feature)."
        ),
    )
    graph_window_days: int = field(
        default=30,
        metadata=_doc("Edges of the entity graph expire this many days after last seen."),
    )
    graph_scan_minutes: int = field(
        default=10,
        metadata=_doc(
            "Event time between ring scans: a changed group is analysed at most this often."
        ),
    )
    graph_stale_after_s: float = field(
        default=30.0,
        metadata=_doc(
            "With the graph on, a worker deciding without the graph shard in its own process "
            "takes ring scores from Redis; if the graph shard has not shown it is running "
            "for this long (wall clock), decisions fail closed (`fail_closed:graph`) until "
            "it has."
        ),
    )
    policy_file: str = field(
        default="",
        metadata=_doc(
            "Rebate policy (TOML or JSON) a worker starts with when Redis holds none yet; "
            "empty: the shipped `rebate_guard/core/policies/default.toml`. The live policy is "
            "the one in Redis: change it with `rebate-guard policy push FILE`."
        ),
    )
    policy_poll_s: float = field(
        default=1.0,
        metadata=_doc(
            "How often the worker looks for a new policy in Redis (hot reload, no restart)."
        ),
    )
    score_at_payment: bool = field(
        default=True,
        metadata=_doc(
            "`POST /score` decides at once from the state as it stands when this worker "
            "holds the transaction's user and entity partitions (docs/policy.md, \"Decisions "
            "at payment time\"); otherwise, or off, it waits for the stream's decision."
        ),
    )
    score_wait_ms: int = field(
        default=250,
        metadata=_doc(
            "How long `POST /score` waits for the pipeline's decision before answering with "
            "a provisional fail-closed one (nothing granted now)."
        ),
    )
    score_max_in_flight: int = field(
        default=0,
        metadata=_doc(
            "Load shedding: `POST /score` requests one worker works on at once (0: no "
            "limit). Past it a request is answered at once, provisional "
            "(`fail_closed:overload`, nothing granted), its transaction still produced for "
            "the stream to decide. Past a worker's capacity this trades decided answers for "
            "a shorter tail (benchmarks/README.md, session 9)."
        ),
    )
    fail_closed_action: str = field(
        default="hold",
        metadata=_doc(
            "What a decision is when a part is unavailable: `POST /score` without the "
            "pipeline's decision in time (Redis or the broker down, the pipeline behind), or "
            "a transaction the model cannot score: `hold` or `block`; never an allow."
        ),
    )
    learner: str = field(
        default="logreg",
        metadata=_doc(
            "The supervised classifier that learns from labels: `logreg` (online logistic "
            "regression), `arf` (River's adaptive random forest, the regression alongside "
            "for reasons) or `arf+logreg` (the mean of their log-odds). Chosen at start: a "
            "checkpoint keeps the one it was made with (benchmarks/README.md, session 12)."
        ),
    )
    user_ttl_days: int = field(
        default=730,
        metadata=_doc(
            "Feature state forgets a user idle this long (their account age restarts). "
            "Windowed state is dropped as soon as its windows expire."
        ),
    )

    # --- derived values -------------------------------------------------------------------
    @property
    def faust_broker_url(self) -> str:
        return ";".join(f"kafka://{hp.strip()}" for hp in self.kafka_bootstrap.split(","))

    def topic(self, name: str) -> str:
        """The full name of one of the contract topics (see docs/events.md)."""
        return f"{self.topic_prefix}{name}"

    def engine_config(self) -> EngineConfig:
        from features.engine import EngineConfig

        return EngineConfig(
            utc_offset_minutes=self.local_utc_offset_minutes,
            user_ttl_ms=self.user_ttl_days * DAY_MS,
        )

    def graph_config(self) -> GraphConfig:
        from graph.layer import GraphConfig

        return GraphConfig(
            window_ms=self.graph_window_days * DAY_MS,
            scan_every_ms=self.graph_scan_minutes * MINUTE_MS,
        )

    def risk_model(self) -> RiskModel:
        """A fresh risk model with the configured `learner`."""
        from detectors.online import make_classifier
        from detectors.risk import RiskModel

        return RiskModel(classifier=make_classifier(self.learner))

    def policy(self) -> Policy:
        """The policy a worker starts with (`policy_file`, or the shipped default)."""
        from rebate_guard.core.policy import Policy, default_policy

        return Policy.load(Path(self.policy_file)) if self.policy_file else default_policy()

    @property
    def api_token_file(self) -> Path:
        return self.data_dir / API_TOKEN_FILE

    @property
    def console_users_path(self) -> Path:
        """Where the console's users are: `console_users_file`, or the data directory's."""
        if self.console_users_file:
            return Path(self.console_users_file)
        return self.data_dir / CONSOLE_USERS_FILE

    def with_api_token(self) -> Settings:
        """These settings with an API token: `api_token`, else the one in `api_token_file`,
        else a new random one written there (readable by this user only). Workers started
        at once on one data directory agree: the first to create the file wins."""
        if self.api_token:
            return self
        path = self.api_token_file
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            # Written whole, then linked into place: a reader never sees a partial file.
            draft = path.with_name(f".{path.name}.{os.getpid()}")
            fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(32) + "\n")
            with contextlib.suppress(FileExistsError):  # another process was first
                os.link(draft, path)
            draft.unlink()
        token = path.read_text().strip()
        if not token:
            raise SettingsError(f"{path} is empty: delete it or set RG_API_TOKEN")
        return self.replace(api_token=token)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``RG_*`` variables; unset ones keep their defaults."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(env_name(f.name))
            if raw is None or raw == "":
                continue
            values[f.name] = _coerce(f.name, f.default, raw)
        settings = cls(**values)
        settings.validate()
        return settings

    def to_env(self) -> dict[str, str]:
        """These settings as ``RG_*`` variables, to hand to a child process."""
        return {env_name(f.name): str(getattr(self, f.name)) for f in fields(self)}

    def validate(self) -> None:
        if self.partitions < 1:
            raise SettingsError("RG_PARTITIONS must be at least 1")
        if self.batch_max < 1:
            raise SettingsError("RG_BATCH_MAX must be at least 1")
        if self.batch_within_s <= 0:
            raise SettingsError("RG_BATCH_WITHIN_S must be positive")
        if self.log_level.lower() not in {"debug", "info", "warning", "error"}:
            raise SettingsError("RG_LOG_LEVEL must be one of debug, info, warning, error")
        if not -14 * 60 <= self.local_utc_offset_minutes <= 14 * 60:
            raise SettingsError("RG_LOCAL_UTC_OFFSET_MINUTES must be within -840..840")
        if self.checkpoint_interval_s <= 0 or self.source_idle_s <= 0:
            raise SettingsError("RG_CHECKPOINT_INTERVAL_S and RG_SOURCE_IDLE_S must be positive")
        if self.checkpoint_full_every < 1:
            raise SettingsError("RG_CHECKPOINT_FULL_EVERY must be at least 1")
        if self.simulate_rate <= 0 or self.simulate_live_rate <= 0:
            raise SettingsError("RG_SIMULATE_RATE and RG_SIMULATE_LIVE_RATE must be positive")
        if self.allowed_lateness_ms < 0:
            raise SettingsError("RG_ALLOWED_LATENESS_MS must not be negative")
        if self.graph_window_days < 1 or self.graph_scan_minutes < 1:
            raise SettingsError("RG_GRAPH_WINDOW_DAYS and RG_GRAPH_SCAN_MINUTES must be >= 1")
        if self.learner not in LEARNERS:
            raise SettingsError(f"RG_LEARNER must be one of {', '.join(LEARNERS)}")
        if self.fail_closed_action not in ("hold", "block"):
            raise SettingsError("RG_FAIL_CLOSED_ACTION must be hold or block (never allow)")
        if self.console_history_keep < 0:
            raise SettingsError("RG_CONSOLE_HISTORY_KEEP must not be negative")
        if self.score_wait_ms < 0:
            raise SettingsError("RG_SCORE_WAIT_MS must not be negative")
        if self.score_max_in_flight < 0:
            raise SettingsError("RG_SCORE_MAX_IN_FLIGHT must not be negative")
        if self.consumer_fetch_wait_ms < 1:
            raise SettingsError("RG_CONSUMER_FETCH_WAIT_MS must be at least 1")
        if self.graph_stale_after_s <= 0:
            raise SettingsError("RG_GRAPH_STALE_AFTER_S must be positive")
        if self.policy_poll_s <= 0:
            raise SettingsError("RG_POLICY_POLL_S must be positive")
        if self.user_ttl_days < 31:
            raise SettingsError("RG_USER_TTL_DAYS must be at least 31 (the longest window)")


def env_name(field_name: str) -> str:
    return f"RG_{field_name.upper()}"


def _coerce(name: str, default: Any, raw: str) -> Any:
    try:
        if isinstance(default, bool):
            return raw.strip().lower() in {"1", "true", "yes", "on"}
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, Path):
            return Path(raw)
    except ValueError as exc:
        raise SettingsError(f"{env_name(name)}={raw!r}: {exc}") from None
    return raw


def settings_table() -> str:
    """The README's configuration table, from the field metadata."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for f in fields(Settings):
        rows.append(f"| `{env_name(f.name)}` | `{f.default}` | {f.metadata.get('doc', '')} |")
    return "\n".join(rows)
