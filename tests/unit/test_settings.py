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


def test_api_token_is_generated_once_per_data_dir_and_kept_private(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    first = settings.with_api_token()
    assert len(first.api_token) >= 32 and first.api_token_file == tmp_path / "data" / "api-token"
    assert first.api_token_file.stat().st_mode & 0o777 == 0o600
    assert settings.with_api_token().api_token == first.api_token  # a restart keeps it
    assert [p.name for p in first.api_token_file.parent.iterdir()] == ["api-token"]
    other = Settings(data_dir=tmp_path / "other").with_api_token()
    assert other.api_token != first.api_token
    configured = Settings(data_dir=tmp_path / "x", api_token="set").with_api_token()
    assert configured.api_token == "set" and not (tmp_path / "x").exists()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "api-token").write_text("\n")
    with pytest.raises(SettingsError, match="RG_API_TOKEN"):
        Settings(data_dir=tmp_path / "empty").with_api_token()


def test_secrets_stay_out_of_repr() -> None:
    shown = repr(Settings(api_token="tok-123", console_password="pw-456"))
    assert "tok-123" not in shown and "pw-456" not in shown
    assert Settings.from_env({"RG_API_TOKEN": "t", "RG_CONSOLE_PASSWORD": "p"}).api_token == "t"


def test_the_console_users_file_defaults_to_the_data_dir() -> None:
    assert Settings(data_dir=Path("/d")).console_users_path == Path("/d/console-users.json")
    chosen = Settings.from_env({"RG_DATA_DIR": "/d", "RG_CONSOLE_USERS_FILE": "/etc/rg/u.json"})
    assert chosen.console_users_path == Path("/etc/rg/u.json")
    assert Settings.from_env(chosen.to_env()) == chosen
