"""The `ledger` command as a new user meets it: plain words for expected failures, never a traceback."""

from __future__ import annotations

import io

import pytest

from runtime.cli import main
from runtime.progress import ProgressBar, ProgressCounter


def test_an_operator_command_with_no_serve_running_says_so_and_exits_2(tmp_path, capsys):
    code = main(["projections", "verify", "--data-dir", str(tmp_path / "nothing-here")])

    err = capsys.readouterr().err
    assert code == 2
    assert "no `ledger serve` has run in" in err and "--endpoint-url" in err
    assert "Traceback" not in err


def test_a_serve_state_left_by_a_dead_process_is_not_a_running_serve(tmp_path, capsys):
    (tmp_path / "serve.json").write_text(
        '{"pid": 999999999, "endpoint_url": "http://127.0.0.1:1", "api_url": "x", "stage": "dev", "region": "us-east-1"}'
    )

    code = main(["audit", "close", "--data-dir", str(tmp_path)])

    assert code == 2 and "is not running any more" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["projections", "verify"], ["projections", "rebuild"], ["audit", "verify"]])
def test_an_unknown_account_is_an_error_not_all_is_well(stage, command, capsys):
    code = main([*command, "--account", "nosuch", "--aws", "--stage", stage.settings.stage, "--region", "us-east-1"])

    assert code == 2 and "no such account: nosuch" in capsys.readouterr().err


def test_closing_days_that_cannot_be_closed_yet_says_why(stage, capsys):
    code = main(["audit", "close", "--until", "2999-01-01T00:00:00Z", "--aws", "--stage", stage.settings.stage])

    assert code == 0 and "only days that ended before" in capsys.readouterr().err


def test_dynamodb_unreachable_is_one_line_not_a_traceback(tmp_path, capsys):
    code = main(["projections", "verify", "--endpoint-url", "http://127.0.0.1:9"])

    err = capsys.readouterr().err
    assert code == 1 and "DynamoDB failed" in err and "Traceback" not in err


@pytest.mark.parametrize("line", [lambda s: ProgressBar("x", s), lambda s: ProgressCounter("x", s)])
def test_a_progress_line_always_ends_with_a_newline(line):
    stream = io.StringIO()
    with line(stream) as progress:
        progress(3, 7) if isinstance(progress, ProgressBar) else progress(3)

    assert stream.getvalue().endswith("\n")


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        (["--regions", "us-east-1,moon-base-1x"], "regions must be AWS region names"),
        (["--stage", "prod stage"], "stage 'prod stage'"),
    ],
)
def test_package_refuses_what_it_cannot_deploy_in_one_line(tmp_path, capsys, arguments, complaint):
    code = main(["package", "--out", str(tmp_path / "dist"), *arguments])

    assert code == 2
    assert complaint in capsys.readouterr().err
    assert not (tmp_path / "dist" / "deployment.zip").exists()


class _FirstAttemptTimedOut:
    """A DynamoDB client whose CreateTable answer was lost: the table was made, and botocore's retry is refused."""

    def __init__(self, client):
        self._client = client

    def __getattr__(self, name):
        return getattr(self._client, name)

    def create_table(self, **definition):
        self._client.create_table(**definition)
        return self._client.create_table(**definition)  # ResourceInUseException


def test_tables_create_takes_a_refused_retry_of_its_own_create_as_created(moto_dynamodb):
    from ledger.config import Settings
    from runtime.tables import all_definitions, ensure_tables

    settings = Settings(stage="retried-create", region="us-east-1")
    created = ensure_tables(_FirstAttemptTimedOut(moto_dynamodb), settings)
    try:
        assert sorted(created) == sorted(d["TableName"] for d in all_definitions(settings)[0])
        ttl = moto_dynamodb.describe_time_to_live(TableName=settings.tables.idempotency)["TimeToLiveDescription"]
        assert ttl["TimeToLiveStatus"] == "ENABLED"
    finally:
        for name in created:
            moto_dynamodb.delete_table(TableName=name)
