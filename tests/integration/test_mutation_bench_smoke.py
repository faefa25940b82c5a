"""bench.mutation at a tiny size, so it cannot rot (figures are checked for sanity, never for speed)."""

from __future__ import annotations

import json

from bench.mutation import main


def test_mutation_bench_writes_sane_figures(tmp_path, capsys) -> None:
    out = tmp_path / "mutation.json"
    assert main(["--tasks", "5", "--rounds", "1", "--output", str(out)]) == 0
    results = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == results
    cases = {c["name"]: c for c in results["executor"]}
    assert set(cases) == {"no_hook", "noop_hook", "policy_hook", "kubernetes_executor"}
    assert all(c["cpu_us_per_task"] > 0 and c["tasks"] == 5 for c in cases.values())
    assert cases["no_hook"]["patch_bytes"] == cases["noop_hook"]["patch_bytes"] == 0  # nothing changed: no patch
    assert cases["policy_hook"]["patch_bytes"] > 0
    assert cases["policy_hook"]["message_bytes"] == cases["no_hook"]["message_bytes"] + cases["policy_hook"][
        "patch_bytes"]
    assert min(results["launcher"].values()) > 0
