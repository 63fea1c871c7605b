"""BatchGetItem's unprocessed keys are asked for again, with backoff, and a table that keeps them is a retryable error, not a hang."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from ledger.store import BATCH_GET_ATTEMPTS, batch_get_all

TABLE = "events"


def key(n: int) -> dict[str, Any]:
    return {"pk": {"S": f"k{n}"}}


class Table:
    """A BatchGetItem that processes at most `per_answer` keys an answer (0: none), after `stalls` answers that process none."""

    def __init__(self, per_answer: int, stalls: int = 0) -> None:
        self.per_answer, self.stalls, self.calls = per_answer, stalls, 0

    def batch_get_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        keys = RequestItems[TABLE]["Keys"]
        taken = 0 if self.calls <= self.stalls else self.per_answer
        rest = keys[taken:]
        return {
            "Responses": {TABLE: [{**k, "found": {"BOOL": True}} for k in keys[:taken]]},
            "UnprocessedKeys": {TABLE: {**RequestItems[TABLE], "Keys": rest}} if rest else {},
        }


def test_unprocessed_keys_are_asked_for_again_after_a_growing_pause_and_nothing_is_lost():
    table, pauses = Table(per_answer=10, stalls=3), []

    found = list(batch_get_all(table, {TABLE: {"Keys": [key(n) for n in range(5)]}}, sleep=pauses.append))

    assert [item["pk"]["S"] for _, item in found] == [f"k{n}" for n in range(5)]
    assert table.calls == 4
    assert len(pauses) == 3 and all(0 <= p <= 0.025 * 2**i for i, p in enumerate(pauses))


def test_answers_that_bring_something_never_run_out_of_attempts():
    """An answer cut at 16 MB is progress: a large read pages on however many answers it takes."""
    table = Table(per_answer=1)

    found = list(batch_get_all(table, {TABLE: {"Keys": [key(n) for n in range(3 * BATCH_GET_ATTEMPTS)]}}, sleep=lambda _: None))

    assert len(found) == 3 * BATCH_GET_ATTEMPTS


def test_a_table_that_keeps_every_key_is_a_throughput_error_after_a_bounded_number_of_requests():
    table, pauses = Table(per_answer=0), []

    with pytest.raises(ClientError) as refused:
        list(batch_get_all(table, {TABLE: {"Keys": [key(1), key(2)]}}, sleep=pauses.append))

    assert refused.value.response["Error"]["Code"] == "ProvisionedThroughputExceededException"
    assert table.calls == BATCH_GET_ATTEMPTS
    assert len(pauses) == BATCH_GET_ATTEMPTS - 1
    assert sum(pauses) <= 0.025 * (2 ** (BATCH_GET_ATTEMPTS - 1) - 1)  # a fast refusal: under 0.8 s of waiting in all
