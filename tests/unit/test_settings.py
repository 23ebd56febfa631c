from pathlib import Path

import pytest

from rebate_guard.settings import Settings, SettingsError, settings_table


def test_environment_overrides_defaults_with_types() -> None:
    s = Settings.from_env(
        {
            "RG_KAFKA_BOOTSTRAP": "k1:9092,k2:9092",
            "RG_PARTITIONS": "8",
            "RG_BATCH_WITHIN_S": "0.1",
            "RG_DATA_DIR": "/tmp/x",
            "UNRELATED": "1",
        }
    )
    assert s.partitions == 8 and s.batch_within_s == 0.1 and s.data_dir == Path("/tmp/x")
    assert s.faust_broker_url == "kafka://k1:9092;kafka://k2:9092"
    assert Settings.from_env({}) == Settings()


def test_bad_values_name_the_variable() -> None:
    with pytest.raises(SettingsError, match="RG_PARTITIONS"):
        Settings.from_env({"RG_PARTITIONS": "many"})
    with pytest.raises(SettingsError, match="RG_PARTITIONS must be at least 1"):
        Settings.from_env({"RG_PARTITIONS": "0"})


def test_the_learner_is_chosen_by_setting_and_checked() -> None:
    from detectors.online import ForestClassifier, OnlineClassifier

    assert isinstance(Settings().risk_model().classifier, OnlineClassifier)
    chosen = Settings.from_env({"RG_LEARNER": "arf+logreg"}).risk_model().classifier
    assert isinstance(chosen, ForestClassifier) and chosen.blend
    with pytest.raises(SettingsError, match="RG_LEARNER"):
        Settings.from_env({"RG_LEARNER": "xgboost"})


def test_round_trip_through_environment_for_child_processes() -> None:
    s = Settings(partitions=3, topic_prefix="t.", web_port=7000)
    assert Settings.from_env(s.to_env()) == s


def test_settings_are_frozen_and_documented() -> None:
    with pytest.raises(AttributeError):
        Settings().partitions = 2  # type: ignore[misc]
    table = settings_table()
    assert "`RG_REDIS_URL`" in table and "| |" not in table


def test_readme_configuration_table_matches_the_settings() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    start = readme.index("<!-- settings-table:start -->") + len("<!-- settings-table:start -->\n")
    end = readme.index("<!-- settings-table:end -->")
    assert readme[start:end].strip() == settings_table()
