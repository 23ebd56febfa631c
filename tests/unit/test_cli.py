import io
import json
from pathlib import Path

import polars as pl
import pytest

from rebate_guard.cli import main
from streams.users import UsersFile


def test_simulate_then_replay_decides_every_transaction(tmp_path: Path, capsys) -> None:
    world = tmp_path / "world"
    args = ["simulate", "--out", str(world), "--transactions", "5000", "--days", "3"]
    assert main(args) == 0
    assert (world / "truth" / "tx_truth.parquet").exists()  # ground truth kept apart
    assert (
        main(
            [
                "replay",
                "--transactions",
                str(world / "transactions.parquet"),
                "--signups",
                str(world / "signups.parquet"),
                "--labels",
                str(world / "labels.parquet"),
                "--out",
                str(tmp_path / "out"),
                "--quiet",
            ]
        )
        == 0
    )
    txs = pl.read_parquet(world / "transactions.parquet")
    decisions = pl.read_parquet(tmp_path / "out" / "decisions.parquet")
    assert decisions.height == txs.height
    assert set(decisions["tx_id"]) == set(txs["tx_id"])
    printed = capsys.readouterr().out
    assert "decisions" in printed
    # The shipped policy is in budget mode: the cut and the friction it achieved are shown.
    assert "budget *: cut " in printed and "against 1.00%" in printed
    assert (tmp_path / "out" / "budget.json").exists()


def test_csv_and_jsonl_worlds_replay_the_same_as_parquet(tmp_path: Path) -> None:
    results = {}
    for fmt in ("parquet", "csv", "jsonl"):
        world = tmp_path / fmt
        assert (
            main(
                [
                    "simulate",
                    "--out",
                    str(world),
                    "--transactions",
                    "3000",
                    "--days",
                    "3",
                    "--format",
                    fmt,
                ]
            )
            == 0
        )
        ext = fmt
        assert (
            main(
                [
                    "replay",
                    "--transactions",
                    str(world / f"transactions.{ext}"),
                    "--signups",
                    str(world / f"signups.{ext}"),
                    "--out",
                    str(tmp_path / f"out-{fmt}"),
                    "--quiet",
                ]
            )
            == 0
        )
        results[fmt] = pl.read_parquet(tmp_path / f"out-{fmt}" / "decisions.parquet").drop(
            "decided_at"
        )
    assert results["csv"].equals(results["parquet"])
    assert results["jsonl"].equals(results["parquet"])


def test_user_errors_exit_2_with_a_message(tmp_path: Path, capsys) -> None:
    code = main(
        ["replay", "--transactions", str(tmp_path / "missing.parquet"), "--out", str(tmp_path)]
    )
    assert code == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["no-such-command"])


def test_up_refuses_a_back_fill_of_less_than_a_day_before_starting_anything(capsys) -> None:
    # Refused before the stack starts: nothing is spawned, the message names the option.
    assert main(["up", "--backfill-days", "0"]) == 2
    assert "--backfill-days must be >= 1" in capsys.readouterr().err


def test_bad_environment_is_reported_not_raised(monkeypatch, capsys) -> None:
    monkeypatch.setenv("RG_PARTITIONS", "zero")
    assert main(["topics"]) == 2
    assert "RG_PARTITIONS" in capsys.readouterr().err


def test_features_command_writes_one_row_per_transaction(tmp_path: Path, capsys) -> None:
    from rebate_guard.core.decider import ALL_FEATURE_NAMES

    world = tmp_path / "world"
    assert main(["simulate", "--out", str(world), "--transactions", "3000", "--days", "3"]) == 0
    out = tmp_path / "f" / "features.parquet"
    assert (
        main(
            [
                "features",
                "--transactions",
                str(world / "transactions.parquet"),
                "--signups",
                str(world / "signups.parquet"),
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    frame = pl.read_parquet(out)
    txs = pl.read_parquet(world / "transactions.parquet")
    assert frame.columns == ["tx_id", *ALL_FEATURE_NAMES]
    assert frame["tx_id"].to_list() == txs.sort("ts", maintain_order=True)["tx_id"].to_list()
    assert "feature rows" in capsys.readouterr().out


def test_policy_check_accepts_a_valid_file_and_names_the_error_in_a_bad_one(
    tmp_path: Path, capsys
) -> None:
    good = tmp_path / "good.toml"
    good.write_text('version = "v9"\n[thresholds]\nallow_at = 0.9\n')
    assert main(["policy", "check", str(good)]) == 0
    assert "valid, version v9" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text('version = "v9"\n[thresholds]\nscale_at = 0.95\n')
    assert main(["policy", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.toml" in err and "hold_at <= scale_at <= allow_at" in err


def test_replay_records_the_policy_it_was_given(tmp_path: Path) -> None:
    world = tmp_path / "world"
    assert main(["simulate", "--out", str(world), "--transactions", "3000", "--days", "3"]) == 0
    policy = tmp_path / "strict.toml"
    policy.write_text('version = "strict-1"\n[thresholds]\nallow_at = 1.0\nscale_at = 1.0\n')
    out = tmp_path / "out"
    args = ["replay", "--transactions", str(world / "transactions.parquet"), "--out", str(out)]
    assert main([*args, "--policy", str(policy), "--quiet"]) == 0
    decisions = pl.read_parquet(out / "decisions.parquet")
    assert set(decisions["policy_version"]) == {"strict-1"}
    # Nothing is fully trusted under it: no rebate is granted in full.
    assert decisions.filter(pl.col("action") == "allow").height == 0


def test_simulate_random_profile_writes_the_drawn_config(tmp_path: Path) -> None:
    import json

    from rebate_guard.tools.simulator import config_json, read_world, world_config

    world = tmp_path / "world"
    args = ["simulate", "--profile", "random", "--seed", "5", "--transactions", "4000"]
    assert main([*args, "--days", "6", "--out", str(world)]) == 0
    written = json.loads((world / "truth" / "config.json").read_text())
    expected = world_config("random", seed=5, transactions=4000, days=6)
    assert written == config_json(expected)
    assert written["nat_pool_share"] == expected.nat_pool_share  # every knob is there
    assert read_world(world).transactions.height > 2_000
    default = tmp_path / "default"
    assert main(["simulate", "--seed", "5", "--days", "4", "--out", str(default)]) == 0
    assert json.loads((default / "truth" / "config.json").read_text())["target_transactions"] == (
        100_000
    )


def test_simulate_writes_the_platform_events_and_stalls_growth_on_the_day_asked(
    tmp_path: Path, capsys
) -> None:
    import json

    import polars as pl

    from rebate_guard.tools.simulator import read_world

    world = tmp_path / "world"
    args = ["simulate", "--transactions", "3000", "--days", "6", "--out", str(world)]
    assert main([*args, "--stall-day", "2.5"]) == 0
    assert "platform events" in capsys.readouterr().out
    assert json.loads((world / "truth" / "config.json").read_text())["stall_day"] == 2.5
    written = read_world(world)
    assert written.platform_events.height > 0
    assert (world / "platform_events.parquet").exists()
    stalled = written.signups.filter(pl.col("ts") >= 1_767_225_600_000 + 2.5 * 86_400_000)
    assert stalled.height < written.signups.filter(pl.col("ts") >= 1_767_225_600_000).height / 2
    assert main([*args, "--stall-day", "9"]) == 2  # past the window
    assert "stall_day" in capsys.readouterr().err


def _users(monkeypatch, tmp_path: Path, *args: str, stdin: str = "") -> int:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("RG_DATA_DIR", str(tmp_path))
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return main(["users", *args])


def test_users_add_list_role_remove(tmp_path: Path, monkeypatch, capsys) -> None:
    path = tmp_path / "console-users.json"
    add = ["add", "alice", "--role", "reviewer", "--password-stdin"]
    assert _users(monkeypatch, tmp_path, *add, stdin="alpine meadow 7\n") == 0
    assert "'alice' can log in as reviewer" in capsys.readouterr().out
    assert path.stat().st_mode & 0o777 == 0o600 and "alpine" not in path.read_text()
    assert UsersFile(path).read()["alice"].verify("alpine meadow 7")  # newline not kept
    monkeypatch.setattr("getpass.getpass", lambda prompt="": "b0b's secret phrase")
    assert _users(monkeypatch, tmp_path, "add", "bob", "--role", "viewer") == 0
    assert UsersFile(path).read()["bob"].verify("b0b's secret phrase")
    capsys.readouterr()
    assert _users(monkeypatch, tmp_path, "list") == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[:2] == ["reviewer  alice", "viewer    bob"]
    assert "admin" in listed[2] and "bootstrap" in listed[2]
    assert _users(monkeypatch, tmp_path, "role", "bob", "admin") == 0
    assert UsersFile(path).read()["bob"].role == "admin"
    assert _users(monkeypatch, tmp_path, "remove", "alice") == 0
    assert list(json.loads(path.read_text())) == ["bob"]
    assert _users(monkeypatch, tmp_path, "remove", "alice") == 2
    assert "no user 'alice'" in capsys.readouterr().err


def test_users_add_refuses_weak_passwords_existing_names_and_the_bootstrap_user(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    path = tmp_path / "console-users.json"
    add = ["add", "carol", "--role", "viewer", "--password-stdin"]
    for weak, reason in (
        ("", "at least 10"),
        ("short", "at least 10"),
        ("aaaaaaaaaaaa", "5 different"),
        ("my name is Carol!", "user name"),
    ):
        assert _users(monkeypatch, tmp_path, *add, stdin=weak + "\n") == 2, weak
        assert reason in capsys.readouterr().err
    assert not path.exists()
    answers = iter(["first try phrase", "second try phrase"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    assert _users(monkeypatch, tmp_path, "add", "carol", "--role", "viewer") == 2
    assert "differ" in capsys.readouterr().err and not path.exists()
    assert _users(monkeypatch, tmp_path, *add, stdin="granite tower 9\n") == 0
    assert _users(monkeypatch, tmp_path, *add, stdin="another phrase 9\n") == 2
    assert "exists" in capsys.readouterr().err
    assert _users(monkeypatch, tmp_path, *add, "--replace", stdin="another phrase 9\n") == 0
    assert UsersFile(path).read()["carol"].verify("another phrase 9")
    capsys.readouterr()
    admin = ["add", "admin", "--role", "viewer", "--password-stdin"]
    assert _users(monkeypatch, tmp_path, *admin, stdin="granite tower 9\n") == 2
    assert "bootstrap" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _users(monkeypatch, tmp_path, "add", "dave", "--role", "root", "--password-stdin")
