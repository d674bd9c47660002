"""The repository folder `transports/` installs as the import package `codeq_transports`,
found through the `codeq.transports` entry point, both editable and from a wheel."""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from codeq.transport import ENTRY_POINT_GROUP, load_transport

REPO = Path(__file__).resolve().parents[1]
HTTP_ENTRY_POINT = "codeq_transports.http:HttpTransport"
# Where each repository folder lands in an installed tree.
INSTALLED_AS = {"codeq": "codeq", "transports": "codeq_transports"}
NOT_SOURCES = shutil.ignore_patterns(
    ".venv", ".git", ".mypy_cache", ".ruff_cache", ".pytest_cache", "__pycache__",
    "build", "dist", "*.egg-info",
)  # fmt: skip


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built offline from a copy of the repository (the work tree stays clean)."""
    source = tmp_path_factory.mktemp("source") / "codeq"
    shutil.copytree(REPO, source, ignore=NOT_SOURCES)
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "--quiet", "--wheel-dir", str(out), str(source)],
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout + build.stderr
    (built,) = out.glob("codeq-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def _dist_info_file(names: set[str], name: str) -> str:
    (path,) = [n for n in names if n.split("/")[0].endswith(".dist-info") and n.endswith(name)]
    return path


# ------------------------------------------------------------ editable install


def test_editable_entry_point_loads_the_repository_transport() -> None:
    """Editable: the `http` entry point loads HttpTransport from the repo's transports/http.py."""
    (http,) = entry_points(group=ENTRY_POINT_GROUP, name="http")
    assert http.value == HTTP_ENTRY_POINT
    transport = http.load()
    module = sys.modules[transport.__module__]
    assert module.__name__ == "codeq_transports.http"
    assert Path(module.__file__ or "").resolve() == REPO / "transports" / "http.py"
    assert load_transport("http") is transport


# ------------------------------------------------------------ wheel


def test_wheel_maps_transports_to_codeq_transports(wheel_names: set[str]) -> None:
    """Wheel: transports/ ships as codeq_transports/, never as a top-level `transports`."""
    assert "codeq_transports/http.py" in wheel_names
    assert {name.split("/")[0] for name in wheel_names if "/" in name} == {
        "codeq", "codeq_transports", _dist_info_file(wheel_names, "/RECORD").split("/")[0],
    }  # fmt: skip


def test_wheel_holds_every_module_and_lua_script(wheel_names: set[str]) -> None:
    """Wheel: every .py of codeq/ and transports/ and every store script is packed."""
    expected = {
        f"{INSTALLED_AS[top]}/{path.relative_to(REPO / top).as_posix()}"
        for top in INSTALLED_AS
        for path in (REPO / top).rglob("*")
        if path.suffix in {".py", ".lua"} and "__pycache__" not in path.parts
    }
    assert {n for n in expected if n.endswith(".lua")}, "no Lua scripts found in the repo"
    assert sorted(expected - wheel_names) == []


def test_wheel_declares_the_transport_entry_point(wheel: Path, wheel_names: set[str]) -> None:
    """Wheel: entry_points.txt registers http and websocket under codeq.transports and the
    codeq command."""
    with zipfile.ZipFile(wheel) as archive:
        text = archive.read(_dist_info_file(wheel_names, "/entry_points.txt")).decode()
    declared = configparser.ConfigParser()
    declared.read_string(text)
    assert dict(declared[ENTRY_POINT_GROUP]) == {
        "http": HTTP_ENTRY_POINT,
        "websocket": "codeq_transports.websocket:WebSocketTransport",
    }
    assert declared["console_scripts"]["codeq"] == "codeq.cli:main"


UNPACKED_PROBE = textwrap.dedent(
    """
    import importlib.util, json
    from importlib.metadata import entry_points
    import codeq
    from codeq.store import scripts
    (http,) = entry_points(group="codeq.transports", name="http")
    transport = http.load()
    print(json.dumps({
        "codeq": codeq.__file__,
        "transport": __import__(transport.__module__, fromlist=["_"]).__file__,
        "dist": str(http.dist.locate_file("")),
        "scripts": {name: len(scripts.source(name)) for name in scripts.NAMES},
        "top_level_transports": importlib.util.find_spec("transports") is not None,
    }))
    """
)


def test_unpacked_wheel_loads_its_own_transport(wheel: Path, tmp_path: Path) -> None:
    """Wheel: unpacked on PYTHONPATH, the entry point loads codeq_transports from the wheel."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = subprocess.run(
        [sys.executable, "-c", UNPACKED_PROBE], env=env, cwd=tmp_path,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    assert Path(found["codeq"]).is_relative_to(site), found
    assert Path(found["transport"]) == site / "codeq_transports" / "http.py", found
    assert Path(found["dist"]) == site, found
    assert all(size > 0 for size in found["scripts"].values()), found
    assert found["top_level_transports"] is False
