"""How operator commands find a running `ledger serve`: a small state file in its data directory.

`serve` writes `serve.json` (its pid, the embedded DynamoDB's endpoint, the API's
URL, stage, region and write journal) once it is ready, and removes it when it
stops. `ledger projections verify`, `audit close` and the rest read it when no
endpoint is given, so they reach the embedded DynamoDB, whose port changes at every
start, without flags, and say plainly when no `serve` is running there.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

STATE_FILE = "serve.json"
DEFAULT_DATA_DIR = ".ledger-data"


class NoRunningServe(Exception):
    """No live `ledger serve` owns this data directory."""


@dataclass(frozen=True)
class ServeState:
    pid: int
    endpoint_url: str
    api_url: str
    stage: str
    region: str
    journal: str | None = None
    dynamodb_pid: int | None = None
    regions: dict[str, dict[str, str]] | None = None  # with --regions: region -> {endpoint_url, api_url}

    def write(self, data_dir: Path) -> Path:
        path = Path(data_dir) / STATE_FILE
        temp = path.with_name(path.name + ".tmp")
        temp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(temp, path)
        return path

    @classmethod
    def read(cls, data_dir: Path) -> ServeState:
        """The state of the `serve` running on `data_dir`; `NoRunningServe` if there is none."""
        path = Path(data_dir) / STATE_FILE
        try:
            state = cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            raise NoRunningServe(f"no `ledger serve` has run in {data_dir} (no {STATE_FILE})") from None
        except (OSError, ValueError, TypeError) as exc:
            raise NoRunningServe(f"{path} is not readable: {exc}") from exc
        if not _alive(state.pid):
            raise NoRunningServe(f"the `ledger serve` of {data_dir} (pid {state.pid}) is not running any more")
        return state


def remove(data_dir: Path) -> None:
    (Path(data_dir) / STATE_FILE).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
