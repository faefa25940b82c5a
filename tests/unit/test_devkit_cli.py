"""``python -m devkit``'s argument handling."""

from __future__ import annotations

import pytest

import devkit.__main__ as cli
import devkit.demo


@pytest.mark.parametrize("args", [["--keep"], ["--down"], ["--real-node", "--timeout", "60"], []])
def test_demo_options_reach_the_demo_as_given(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> None:
    seen: list[list[str]] = []
    monkeypatch.setattr(devkit.demo, "main", lambda argv: seen.append(list(argv)) or 0)
    assert cli.main(["demo", *args]) == 0
    assert seen == [args]


def test_realnode_subcommand_parses() -> None:
    args = cli.build_parser().parse_args(["realnode", "up", "--node-dir", "/tmp/n"])
    assert (args.action, args.node_dir, args.func) == ("up", "/tmp/n", cli.cmd_realnode)
