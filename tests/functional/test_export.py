"""`ledger export`: canonical lines, a manifest that checks out, and a resume that changes no byte."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest

from audit.canonical import canonical_fields, canonical_line, digest_of
from audit.export import CSV_COLUMNS, ExportError, Query, account_source, export
from ledger.ids import format_rfc3339, ulid_time
from past_events import EPOCH, append, at, past_event
from runtime.cli import main


@pytest.fixture
def history(ledger):
    events = [past_event(f"acct-{n}", at(n)) for n in range(3)]
    events += [past_event(f"acct-{n % 3}", at(600 * n + 7), (-1) ** n * (n + 1)) for n in range(1, 150)]
    events[5] = events[5].model_copy(update={"description": "Café, €5 \"quoted\"", "metadata": {"k": "v,1"}})
    append(ledger, events)
    return sorted(events, key=lambda e: (e.event_id, e.entity_id))


def window():
    return EPOCH, at(600 * 200)


def test_jsonl_lines_are_the_canonical_lines_and_the_manifest_checks_out(root, ledger, history, tmp_path: Path):
    out = tmp_path / "all.jsonl"
    start, end = window()

    manifest = export(lambda after: root.timeline.events(start, end, after), Query((), start, end, "jsonl"), out)

    assert out.read_bytes() == b"".join(canonical_line(e) for e in history)
    assert manifest["count"] == len(history) and manifest["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert (manifest["first_event_id"], manifest["last_event_id"]) == (history[0].event_id, history[-1].event_id)
    assert json.loads((tmp_path / "all.jsonl.manifest.json").read_text()) == manifest
    assert not (tmp_path / "all.jsonl.export.json").exists()


def test_csv_has_fixed_columns_and_reads_back(root, ledger, history, tmp_path: Path):
    out = tmp_path / "all.csv"
    start, end = window()
    export(lambda after: root.timeline.events(start, end, after), Query((), start, end, "csv"), out)

    rows = list(csv.DictReader(out.open(encoding="utf-8", newline="")))

    assert list(rows[0]) == CSV_COLUMNS and len(rows) == len(history)
    for row, event in zip(rows, history):
        fields = canonical_fields(event)
        assert json.loads(row["metadata"]) == fields["metadata"]
        assert {k: v for k, v in row.items() if v and k != "metadata"} == {
            k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in fields.items() if k != "metadata"
        }


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
@pytest.mark.parametrize("stop_after", [0, 1, 77, 151])
def test_an_interrupted_export_resumes_to_the_same_bytes(root, ledger, history, tmp_path: Path, fmt: str, stop_after: int):
    start, end = window()
    query = Query((), start, end, fmt)
    source = lambda after: root.timeline.events(start, end, after)  # noqa: E731
    whole = tmp_path / f"whole.{fmt}"
    export(source, query, whole)

    def dying(after):
        for n, event in enumerate(source(after)):
            if n == stop_after:
                raise Interrupted
            yield event

    partial = tmp_path / f"partial.{fmt}"
    with pytest.raises(Interrupted):
        export(dying, query, partial)
    with partial.open("ab") as handle:
        handle.write(b'{"event_id":"01TORN')  # a torn last line, as a crash mid-write leaves
    manifest = export(source, query, partial)

    assert partial.read_bytes() == whole.read_bytes()
    assert manifest["count"] == len(history) and manifest["sha256"] == hashlib.sha256(whole.read_bytes()).hexdigest()


def test_another_query_cannot_resume_a_partial_file(ledger, history, tmp_path: Path):
    start, end = window()
    out = tmp_path / "x.jsonl"

    def dying(after):
        raise Interrupted
        yield

    with pytest.raises(Interrupted):
        export(dying, Query((), start, end, "jsonl"), out)
    with pytest.raises(ExportError):
        export(lambda after: iter(()), Query(("acct-1",), start, end, "jsonl"), out)


def test_the_cli_exports_one_account_and_its_digest_continues_to_the_api_s(api, ledger, history, settings, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("LEDGER_ENDPOINT_URL", raising=False)
    start, end = at(600 * 50), at(600 * 120)
    out = tmp_path / "acct-1.jsonl"
    args = ["export", "--account", "acct-1", "--from", format_rfc3339(start), "--to", format_rfc3339(end), "--out", str(out)]

    assert main([*args, "--aws", "--stage", settings.stage, "--region", settings.region]) == 0

    mine = [e for e in history if e.entity_id == "acct-1"]
    exported = [e for e in mine if start <= _t(e) <= end]
    assert out.read_bytes() == b"".join(canonical_line(e) for e in exported)
    manifest = json.loads((tmp_path / "acct-1.jsonl.manifest.json").read_text())
    before = [e for e in mine if _t(e) < start]
    assert manifest["digest_before"] == digest_of(before)[0]
    assert manifest["digest_after"] == digest_of(before + exported)[0]
    served = api.get("/accounts/acct-1/digest", {"to": format_rfc3339(end)}).json
    assert served["digest"] == manifest["digest_after"]
    assert main(["export", "--out", str(tmp_path / "y.jsonl"), "--aws", "--stage", settings.stage]) == 2  # all accounts need a window


def _t(event):
    return ulid_time(event.event_id)


def test_csv_has_a_column_for_every_field_of_every_event_type(root, ledger, tmp_path: Path):
    """Events as the service writes them: with their caller, and of every type (a freeze included)."""
    from ledger.commands import MovementRequest, OpenAccountRequest, StatusChangeRequest
    from ledger.events import HomeMoved
    from ledger.service import Caller

    ledger.open_account(Caller("ops", "o"), OpenAccountRequest(account_id="zed", currency="EUR"))
    ledger.credit(Caller("app", "c"), "zed", MovementRequest(amount=5, currency="EUR"))
    ledger.freeze(Caller("ops", "f"), "zed", StatusChangeRequest(description="review"))
    types = {name for name, field in HomeMoved.model_fields.items()}
    assert types <= set(CSV_COLUMNS) | {"type", "amount"}, "a HomeMoved field has no CSV column"
    out = tmp_path / "real.csv"

    export(account_source(root.event_store, ("zed",), None, None), Query(("zed",), None, None, "csv"), out)

    rows = list(csv.DictReader(out.open(encoding="utf-8", newline="")))
    assert [(r["type"], r["caller"], r["status"]) for r in rows] == [
        ("account.opened", "ops", ""), ("account.credited", "app", ""), ("account.status_changed", "ops", "frozen"),
    ]  # fmt: skip
