"""What ships: the wheel carries product code only, and the CLI lists production commands only."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from kubestream.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
PRODUCTION_COMMANDS = {"launcher", "watcher", "status", "janitor", "dlq", "cleanup-pods", "acl", "settings"}
DEV_TOOLS = ("devkit", "localcluster", "kubelet", "faultproxy", "redisserver", "airflowstack", "demo")


def _build_wheel(tmp_path: Path) -> list[str]:
    """Build the wheel from a copy of the sources (the checkout keeps no build/ or egg-info)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for tree in ("kubestream", "devkit"):  # devkit is copied too: the build itself must leave it out
        shutil.copytree(REPO / tree, src / tree, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(src)], check=True, capture_output=True, timeout=300)
    (wheel,) = out.glob("kubestream-*.whl")
    return zipfile.ZipFile(wheel).namelist()


def test_the_wheel_holds_product_code_and_its_lua_scripts_only(tmp_path: Path) -> None:
    names = _build_wheel(tmp_path)
    top = {n.split("/", 1)[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"kubestream"}
    assert not [n for n in names if any(tool in n for tool in DEV_TOOLS)]
    lua = {n for n in names if n.endswith(".lua")}
    shipped = {f"kubestream/lua/{p.name}" for p in (REPO / "kubestream" / "lua").glob("*.lua")}
    assert shipped and lua == shipped


def _subcommands(parser: argparse.ArgumentParser) -> set[str]:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return set(sub.choices)


def test_the_cli_offers_production_commands_only() -> None:
    assert _subcommands(build_parser()) == PRODUCTION_COMMANDS
    out = subprocess.run([sys.executable, "-m", "kubestream.cli", "--help"], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    for command in PRODUCTION_COMMANDS:
        assert command in out
    assert "cluster" not in out and "kubelet" not in out
