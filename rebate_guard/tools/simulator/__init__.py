"""A seeded, vectorised rebate-platform world generator (legit population, abuse, look-alikes).

See docs/simulator.md. The public API::

    world = simulate_world(WorldConfig(seed=7, target_transactions=1_000_000))
    world = simulate_world(world_config("random", seed=3))  # a randomised platform
    write_world(world, Path("out/world"), fmt="parquet")
    for topic, key, payload in event_stream(world): ...
    reviews = ReviewDesk.of(world.tx_truth, config=config)  # replay(reviews=...)
"""

from rebate_guard.tools.simulator._common import ABUSE_SCENARIOS, LOOKALIKES, SCENARIOS
from rebate_guard.tools.simulator._economics import REGIONS, platform_books
from rebate_guard.tools.simulator.config import WorldConfig
from rebate_guard.tools.simulator.profiles import PROFILES, config_json, world_config
from rebate_guard.tools.simulator.review_desk import ReviewDesk
from rebate_guard.tools.simulator.world import (
    CONTRACT_SCHEMAS,
    LABEL_SCHEMA,
    PLATFORM_EVENT_SCHEMA,
    SIGNUP_SCHEMA,
    TRANSACTION_SCHEMA,
    TRUTH_SCHEMAS,
    World,
    event_stream,
    read_world,
    simulate_world,
    write_world,
)

__all__ = [
    "ABUSE_SCENARIOS",
    "CONTRACT_SCHEMAS",
    "LABEL_SCHEMA",
    "LOOKALIKES",
    "PLATFORM_EVENT_SCHEMA",
    "PROFILES",
    "REGIONS",
    "SCENARIOS",
    "SIGNUP_SCHEMA",
    "TRANSACTION_SCHEMA",
    "TRUTH_SCHEMAS",
    "ReviewDesk",
    "World",
    "WorldConfig",
    "config_json",
    "event_stream",
    "platform_books",
    "read_world",
    "simulate_world",
    "world_config",
    "write_world",
]
