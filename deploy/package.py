"""`ledger package`: everything a deploy needs, built into one directory.

`chalice package` alone zips `app.py` and Chalice's own runtime: none of the project's
packages and none of its dependencies, so both functions would fail at import. This
builds a staging copy of the project for Chalice:

1. `vendor/` (which Chalice puts at the root of the zip) gets the project's packages
   (those `pyproject.toml` declares, less this build tool) and their dependencies,
   pinned to the versions installed here and built for Lambda: wheels for
   `manylinux2014_x86_64` (the glibc of the Python 3.11 runtime, Amazon Linux 2), this
   interpreter's Python version (which is also the runtime Chalice names), compiled
   cores such as pydantic's included. boto3 and botocore are pinned and included too,
   rather than left to whatever the runtime happens to ship. Chalice itself is not:
   `chalice package` adds the two modules of it an app runs on. Everything is compiled
   to bytecode that needs no timestamps (the zip's are not kept), since a function
   cannot write its own caches.
2. `.chalice/` gets the project's config with this stage's variables, and one
   generated policy file per function (`deploy.policy`, with `autogen_policy` off).
3. `chalice package --merge-template` writes the service template and the zip, merged
   with `deploy.template.service_merge_template`.

Written to the output directory: `deployment.zip` (both functions' code), `service.json`
(the service stack, deployed in every region), `tables.json` (the table stack, deployed
once) and `requirements.lock` (what went into the zip, pinned).
"""

from __future__ import annotations

import compileall
import importlib.metadata
import json
import os
import py_compile
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from . import template
from .policy import policy_documents

PROJECT = Path(__file__).resolve().parent.parent
PLATFORM = "manylinux2014_x86_64"
# Needed to build the package, not to run it: Chalice adds its own runtime modules to the zip.
BUILD_ONLY = frozenset({"chalice", "packaging"})
NOT_PACKAGED = frozenset({"deploy"})
PLACEHOLDER_STREAM = "arn:aws:dynamodb:us-east-1:000000000000:table/placeholder/stream/replaced-by-the-template"


class PackageError(Exception):
    """The package cannot be built; the message says why."""


@dataclass
class Built:
    """What `package` wrote, and what it measured."""

    out: Path
    files: dict[str, Path]
    pins: list[str]
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def zip_bytes(self) -> int:
        return self.files["deployment.zip"].stat().st_size


def package(
    out: Path,
    stage: str = "dev",
    regions: Sequence[str] = ("us-east-1",),
    *,
    dependencies: bool = True,
    progress: Callable[[str], None] = lambda line: None,
) -> Built:
    """Build the Lambda package and both templates into `out`.

    `dependencies=False` leaves the third-party packages out of the zip (the templates
    are the same): for tests of the templates alone.
    """
    regions = template.check_regions(regions)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}", stage):
        raise PackageError(f"stage {stage!r}: letters, digits, '-' and '_' (it prefixes table names)")
    for needed in ("app.py", ".chalice/config.json", "pyproject.toml"):
        if not (PROJECT / needed).exists():
            raise PackageError(f"{PROJECT / needed} is missing: `ledger package` runs from a checkout of the project")
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    pins = pinned_requirements()
    with tempfile.TemporaryDirectory(prefix="ledger-package-") as work:
        staging = Path(work) / "project"
        vendor = staging / "vendor"
        vendor.mkdir(parents=True)
        started = time.monotonic()
        for name in project_packages():
            shutil.copytree(PROJECT / name, vendor / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        if dependencies:
            progress(f"installing {len(pins)} pinned dependencies for {PLATFORM}, Python {python_version()}")
            _pip_install(pins, vendor)
        seconds["dependencies"] = time.monotonic() - started
        started = time.monotonic()
        # One process: a build shares its machine (tests, a local DynamoDB) and takes seconds either way.
        compileall.compile_dir(str(vendor), quiet=2, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        seconds["compile"] = time.monotonic() - started
        shutil.copy2(PROJECT / "app.py", staging / "app.py")
        (staging / "requirements.txt").write_text("")  # vendor/ holds them: Chalice installs nothing itself
        _write_chalice_config(staging, stage, regions)
        merge = Path(work) / "merge.json"
        merge.write_text(json.dumps(template.service_merge_template(stage, regions), indent=2))
        progress("running chalice package --merge-template")
        started = time.monotonic()
        chalice_out = Path(work) / "chalice-out"
        _chalice_package(staging, stage, regions[0], merge, chalice_out)
        seconds["chalice"] = time.monotonic() - started
        service = json.loads((chalice_out / "sam.json").read_text())
        _check_merged(service)
        files = {
            "deployment.zip": out / "deployment.zip",
            "service.json": out / "service.json",
            "tables.json": out / "tables.json",
            "requirements.lock": out / "requirements.lock",
        }
        shutil.move(str(chalice_out / "deployment.zip"), files["deployment.zip"])
    files["service.json"].write_text(json.dumps(service, indent=2) + "\n")
    files["tables.json"].write_text(json.dumps(template.tables_template(stage, regions), indent=2) + "\n")
    lock = pins if dependencies else []
    files["requirements.lock"].write_text(
        f"# In deployment.zip, built for {PLATFORM}, CPython {python_version()}\n" + "".join(f"{p}\n" for p in lock)
    )
    return Built(out, files, lock, seconds)


def python_version() -> str:
    """The Python the package is built for: this interpreter's, which is also the runtime Chalice names."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def project_packages() -> list[str]:
    """The top-level packages `pyproject.toml` declares, less the build tools."""
    declared = tomllib.loads((PROJECT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    prefixes = {pattern.rstrip("*").rstrip(".") for pattern in declared}
    found = sorted(
        p.name for p in PROJECT.iterdir() if p.name in prefixes and (p / "__init__.py").exists() and p.name not in NOT_PACKAGED
    )
    if not found:
        raise PackageError("pyproject.toml declares no package to put in the zip")
    return found


def _target_environment() -> dict[str, str]:
    version = python_version()
    return {
        "python_version": version,
        "python_full_version": f"{version}.0",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
    }


def _applies(marker: Marker | None, extras: set[str]) -> bool:
    if marker is None:
        return True
    environment = _target_environment()
    return any(marker.evaluate({**environment, "extra": extra}) for extra in (extras or {""}))


def pinned_requirements(project: str = "dynamo-ledger") -> list[str]:
    """`name==version` for every distribution the project needs at run time on Lambda, as installed here.

    Walks the installed metadata from the project's own requirements (not its extras),
    evaluating markers for Lambda's platform and this Python; build-only requirements
    are left out. A requirement that is not installed, or not at a version it accepts,
    is an error: install the project first (`pip install -e .`).
    """
    try:
        root = importlib.metadata.distribution(project)
    except importlib.metadata.PackageNotFoundError as exc:
        raise PackageError(f"{project} is not installed in this environment: pip install -e .") from exc
    found: dict[str, str] = {}
    pending: list[tuple[Requirement, set[str]]] = [(Requirement(r), set()) for r in root.requires or []]
    pending = [(r, e) for r, e in pending if canonicalize_name(r.name) not in BUILD_ONLY]
    while pending:
        requirement, extras = pending.pop()
        if not _applies(requirement.marker, extras):
            continue
        name = canonicalize_name(requirement.name)
        try:
            dist = importlib.metadata.distribution(requirement.name)
        except importlib.metadata.PackageNotFoundError as exc:
            raise PackageError(f"{requirement} is needed on Lambda but not installed here") from exc
        version = dist.version
        if requirement.specifier and not requirement.specifier.contains(version, prereleases=True):
            raise PackageError(f"{requirement} is needed, but {name} {version} is installed")
        if name in found:
            continue
        found[name] = version
        wanted = set(requirement.extras)
        pending.extend((Requirement(r), wanted) for r in dist.requires or [])
    return [f"{name}=={version}" for name, version in sorted(found.items())]


def wheel_cache() -> Path:
    """Where Lambda's wheels are kept between builds: $LEDGER_WHEEL_CACHE, else the user cache dir."""
    configured = os.environ.get("LEDGER_WHEEL_CACHE")
    if configured:
        return Path(configured).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    base = Path(cache).expanduser() if cache else Path.home() / ".cache"
    return base / "dynamo-ledger" / "wheels" / f"{PLATFORM}-cp{python_version().replace('.', '')}"


def _cached(wheelhouse: Path, pin: str) -> bool:
    name, version = pin.split("==")
    stem = f"{canonicalize_name(name).replace('-', '_')}-{version}-"
    return any(w.name.lower().startswith(stem) for w in wheelhouse.glob("*.whl"))


def _pip(*arguments: str) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *arguments]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise PackageError(f"pip could not get the dependencies for Lambda:\n{done.stderr.strip()}")


def _pip_install(pins: list[str], target: Path) -> None:
    """Install exactly `pins` for Lambda into `target`, downloading only the wheels not kept from an earlier build."""
    wheelhouse = wheel_cache()
    wheelhouse.mkdir(parents=True, exist_ok=True)
    platform = ("--only-binary=:all:", "--platform", PLATFORM, "--implementation", "cp", "--python-version", python_version())
    missing = [pin for pin in pins if not _cached(wheelhouse, pin)]
    if missing:
        _pip("download", "--quiet", "--no-deps", *platform, "--dest", str(wheelhouse), *missing)
    _pip(
        "install", "--quiet", "--no-deps", "--no-compile", "--no-index", "--find-links", str(wheelhouse),
        *platform, "--target", str(target), *pins,
    )  # fmt: skip
    shutil.rmtree(target / "bin", ignore_errors=True)  # console scripts: nothing runs them on Lambda


def _write_chalice_config(staging: Path, stage: str, regions: list[str]) -> None:
    config: dict[str, Any] = json.loads((PROJECT / ".chalice" / "config.json").read_text())
    stages = config.setdefault("stages", {})
    stage_config = stages.setdefault(stage, {"api_gateway_stage": "api"})
    stage_config.setdefault("environment_variables", {}).update({"LEDGER_STAGE": stage, "LEDGER_REGIONS": ",".join(regions)})
    if config.get("autogen_policy", True):
        raise PackageError(".chalice/config.json must say \"autogen_policy\": false: the policies are generated")
    functions = config.get("lambda_functions", {})
    for function, document in policy_documents(stage).items():
        policy_file = functions.get(function, {}).get("iam_policy_file")
        if not policy_file:
            raise PackageError(f".chalice/config.json names no iam_policy_file for {function}")
        (staging / ".chalice" / policy_file).parent.mkdir(parents=True, exist_ok=True)
        (staging / ".chalice" / policy_file).write_text(json.dumps(document, indent=2))
    (staging / ".chalice" / "config.json").write_text(json.dumps(config, indent=2))


def _chalice_package(staging: Path, stage: str, region: str, merge: Path, out: Path) -> None:
    environment = {
        **os.environ,
        "AWS_DEFAULT_REGION": region,  # Chalice needs one to name the partition; the template is region-neutral
        "LEDGER_EVENTS_STREAM_ARN": PLACEHOLDER_STREAM,  # the merged template points the mapping at a parameter
    }
    command = [
        sys.executable, "-c", "import sys; from chalice.cli import main; sys.exit(main())",
        "--project-dir", str(staging), "package", "--stage", stage, "--merge-template", str(merge), str(out),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=staging)
    if done.returncode != 0:
        raise PackageError(f"chalice package failed:\n{done.stdout.strip()}\n{done.stderr.strip()}")


def _check_merged(service: dict[str, Any]) -> None:
    """The merge named only what Chalice wrote: a name it did not write would be a resource without a type."""
    untyped = sorted(name for name, resource in service["Resources"].items() if "Type" not in resource)
    if untyped:
        raise PackageError(f"the merge template names resources Chalice did not write: {', '.join(untyped)}")
    mapping = service["Resources"][template.PROJECTOR_FUNCTION]["Properties"]["Events"][template.PROJECTOR_EVENT]
    if mapping["Properties"]["Stream"] == PLACEHOLDER_STREAM:
        raise PackageError("the projector's stream mapping still points at the placeholder stream")
    roles = {name for name, resource in service["Resources"].items() if resource["Type"] == "AWS::IAM::Role"}
    if "DefaultRole" in roles or not {"ApiHandlerRole", "ProjectEventsRole"} <= roles:  # Chalice's names for them
        raise PackageError(f"expected a role of its own for each function, found {sorted(roles)}")
