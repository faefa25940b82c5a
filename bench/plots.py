"""PNG plots of the side-by-side benchmark's results (matplotlib, no display needed).

    .venv/bin/python -m bench.plots bench/results/versus-<time>.json [--out docs/img]

- ``versus-throughput.png``: pods created per second vs added latency, one line per configuration,
  the raw client's ceiling dashed (log scale);
- ``versus-scheduler-cpu.png``: the scheduler thread's CPU per task, per configuration and latency;
- ``versus-heartbeat.png``: the longest scheduler call (heartbeat + get_event_buffer), log scale.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _configs(doc: dict[str, Any]) -> list[str]:
    return list(dict.fromkeys(r["config"] for r in doc["results"]))


def _series(doc: dict[str, Any], config: str, field: str) -> tuple[list[float], list[float]]:
    rows = sorted((r for r in doc["results"] if r["config"] == config), key=lambda r: r["latency_ms"])
    return [r["latency_ms"] for r in rows], [r[field] for r in rows]


def _bars(ax: Any, doc: dict[str, Any], field: str) -> None:
    configs, latencies = _configs(doc), doc["latencies_ms"]
    width = 0.8 / max(1, len(configs))
    for i, config in enumerate(configs):
        by_latency = {r["latency_ms"]: r[field] for r in doc["results"] if r["config"] == config}
        xs = [j + i * width for j in range(len(latencies))]
        ax.bar(xs, [by_latency.get(lat) or 0 for lat in latencies], width, label=config)
    ax.set_xticks([j + width * (len(configs) - 1) / 2 for j in range(len(latencies))])
    ax.set_xticklabels([f"{lat:.0f} ms" for lat in latencies])
    ax.set_xlabel("added latency (one way, per client->server chunk)")


def plot_versus(doc: dict[str, Any], out: Path) -> list[Path]:
    """Write the three plots into ``out``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    subtitle = f"N = {doc['tasks']} tasks, {doc['machine']['cpus']} cores, {doc['generated']}"
    paths = []

    fig, ax = plt.subplots(figsize=(10, 5))
    ceiling = sorted(doc["raw_ceiling"], key=lambda c: c["latency_ms"])
    ax.plot([c["latency_ms"] for c in ceiling], [c["pods_per_s"] for c in ceiling], "k--", marker="x",
            label=f"raw client ceiling ({ceiling[0]['threads'] if ceiling else '?'} threads)")
    for config in _configs(doc):
        xs, ys = _series(doc, config, "pods_per_s")
        ax.plot(xs, ys, marker="o", label=config)
    ax.set_yscale("log")
    ax.set_xlabel("added latency, ms (one way, per client->server chunk)")
    ax.set_ylabel("pods created per second (log)")
    ax.set_title(f"Pod creation throughput\n{subtitle}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    paths.append(_save(fig, out / "versus-throughput.png"))

    fig, ax = plt.subplots(figsize=(10, 5))
    _bars(ax, doc, "scheduler_cpu_ms_per_task")
    ax.set_yscale("log")
    ax.set_ylabel("scheduler CPU per task, ms (log)")
    ax.set_title(f"Scheduler thread CPU per task (heartbeat + get_event_buffer)\n{subtitle}", fontsize=10)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    paths.append(_save(fig, out / "versus-scheduler-cpu.png"))

    fig, ax = plt.subplots(figsize=(10, 5))
    _bars(ax, doc, "heartbeat_ms_max")
    ax.set_yscale("log")
    ax.set_ylabel("longest heartbeat, ms (log)")
    ax.set_title(f"Longest scheduler call (heartbeat + get_event_buffer)\n{subtitle}", fontsize=10)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    paths.append(_save(fig, out / "versus-heartbeat.png"))
    return paths


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.plots", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="a bench/results/versus-*.json file")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "img"))
    args = parser.parse_args(argv)
    for path in plot_versus(json.loads(Path(args.results).read_text()), Path(args.out)):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
