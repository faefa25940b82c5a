"""The side-by-side benchmark's Markdown: a headline table (ratios measured in the same run at each
latency) and a full table per latency, written into docs/benchmarks.md between the markers
``<!-- versus:begin -->`` and ``<!-- versus:end -->``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

BEGIN, END = "<!-- versus:begin -->", "<!-- versus:end -->"


def _by(doc: dict[str, Any], latency: float, config: str) -> dict[str, Any] | None:
    return next((r for r in doc["results"] if r["latency_ms"] == latency and r["config"] == config), None)


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "n/a"
    r = a / b
    return f"**{r:.0f}x**" if r >= 10 else f"**{r:.1f}x**"


def _terminal(r: dict[str, Any]) -> str:
    if r["capped"]:
        return f"{r['tasks_terminal']}/{r['tasks']} in {_fmt(r['seconds_measured'])}*"
    return _fmt(r["seconds_to_all_terminal"])


def _rate(r: dict[str, Any]) -> str:
    return f"{_fmt(r['pods_per_s'])}{'*' if r['capped'] else ''}"


def _equal(doc: dict[str, Any], latency: float, launchers: int, via: str = "proxy") -> dict[str, Any] | None:
    return next((e for e in doc.get("equal_concurrency", []) if e["latency_ms"] == latency
                 and e["launchers"] == launchers and e["via"] == via), None)


def _share(e: dict[str, Any] | None) -> str:
    return "n/a" if e is None else f"**{e['ratio']:.2f}**"


def headline(doc: dict[str, Any]) -> str:
    """kubestream / KubernetesExecutor throughput, and KubernetesExecutor / kubestream scheduler CPU per
    task and longest heartbeat, each pair measured in the same run at the same latency."""
    counts = [doc["launchers"][i] for i in sorted({len(doc["launchers"]) // 2, len(doc["launchers"]) - 1})]
    rows = ["| latency | configuration | pods/s | vs KE best | vs KE default | scheduler CPU ms/task "
            "| KE best / it | KE default / it | longest heartbeat ms | KE best / it | KE default / it "
            "| all N terminal s | KE best / it | its launchers / raw client, same in flight |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for latency in doc["latencies_ms"]:
        best = _by(doc, latency, "KubernetesExecutor best")
        default = _by(doc, latency, "KubernetesExecutor default")
        for count in counts:
            config = f"kubestream {count} launcher{'s' if count > 1 else ''}"
            ks = _by(doc, latency, config)
            if ks is None:
                continue
            rows.append(
                f"| {latency:.0f} ms | {config} | {_rate(ks)} "
                f"| {_ratio(ks['pods_per_s'], best and best['pods_per_s'])} "
                f"| {_ratio(ks['pods_per_s'], default and default['pods_per_s'])} "
                f"| {_fmt(ks['scheduler_cpu_ms_per_task'], 2)} "
                f"| {_ratio(best and best['scheduler_cpu_ms_per_task'], ks['scheduler_cpu_ms_per_task'])} "
                f"| {_ratio(default and default['scheduler_cpu_ms_per_task'], ks['scheduler_cpu_ms_per_task'])} "
                f"| {_fmt(ks['heartbeat_ms_max'])} "
                f"| {_ratio(best and best['heartbeat_ms_max'], ks['heartbeat_ms_max'])} "
                f"| {_ratio(default and default['heartbeat_ms_max'], ks['heartbeat_ms_max'])} "
                f"| {_terminal(ks)} "
                f"| {_ratio(best and best['seconds_to_all_terminal'], ks['seconds_to_all_terminal'])} "
                f"| {_share(_equal(doc, latency, count))} |")
        for ke in (best, default):
            if ke is not None:
                rows.append(f"| {latency:.0f} ms | {ke['config']} | {_rate(ke)} | | "
                            f"| {_fmt(ke['scheduler_cpu_ms_per_task'], 2)} | | | {_fmt(ke['heartbeat_ms_max'])} | | "
                            f"| {_terminal(ke)} | | |")
    return "\n".join(rows)


def equal_table(doc: dict[str, Any]) -> str:
    """Launchers against the raw client with as many creates in flight, create rounds only (no kubelet)."""
    rows = ["| latency | via | launchers x creates in flight | raw client, same threads (pods/s) "
            "| launchers (pods/s) | **launchers / raw** | rounds: raw; launchers (pods/s) |",
            "|---|---|---|---|---|---|---|"]
    for e in doc.get("equal_concurrency", []):
        rounds = e["rounds_pods_per_s"]
        rows.append(f"| {e['latency_ms']:.0f} ms | {e['via']} | {e['launchers']} x {e['in_flight'] // e['launchers']} "
                    f"| {_fmt(e['raw_pods_per_s'])} | {_fmt(e['launchers_pods_per_s'])} | {_share(e)} "
                    f"| {', '.join(_fmt(r) for r in rounds['raw'])}; "
                    f"{', '.join(_fmt(r) for r in rounds['kubestream'])} |")
    return "\n".join(rows)


def _memory(r: dict[str, Any], field: str) -> str:
    mb = r[field]
    helpers = [v for k, v in mb.items() if k not in ("scheduler", "redis-server") and v is not None]
    return f"{_fmt(mb.get('scheduler'))} / {_fmt(sum(helpers)) if helpers else 'n/a'}"


def full_table(doc: dict[str, Any]) -> str:
    rows = ["| latency | configuration | pods/s | all N terminal (s) | report lag p50 / p99 (ms) "
            "| longest heartbeat / p99 (ms) | scheduler CPU ms/task (thread / process) | total CPU ms/task "
            "| peak RSS MB (scheduler / helpers summed) | PSS MB at end (same) | Redis MB (peak over baseline) "
            "| kubelet p50 / p99 ms (its CPU, cores) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    ceilings = {c["latency_ms"]: c for c in doc["raw_ceiling"]}
    for latency in doc["latencies_ms"]:
        c = ceilings.get(latency)
        if c:
            rows.append(f"| {latency:.0f} ms | raw client, {c['threads']} threads (ceiling) | {_fmt(c['pods_per_s'])} "
                        "| | | | | | | | | |")
        for r in (r for r in doc["results"] if r["latency_ms"] == latency):
            done = _terminal(r)
            redis_mb = r["redis_used_memory_mb"]
            rows.append(
                f"| {latency:.0f} ms | {r['config']} | {_rate(r)} | {done} "
                f"| {_fmt(r['report_lag_ms_p50'])} / {_fmt(r['report_lag_ms_p99'])} "
                f"| {_fmt(r['heartbeat_ms_max'])} / {_fmt(r['heartbeat_ms_p99'])} "
                f"| {_fmt(r['scheduler_cpu_ms_per_task'], 2)} / {_fmt(r['scheduler_process_cpu_ms_per_task'], 2)} "
                f"| {_fmt(r['total_cpu_ms_per_task'], 2)} | {_memory(r, 'peak_rss_mb')} | {_memory(r, 'pss_mb')} "
                f"| {_fmt(redis_mb['peak_over_baseline'], 2) if redis_mb else 'n/a'} "
                f"| {_fmt(r['kubelet_ms_p50'])} / {_fmt(r['kubelet_ms_p99'])} ({_fmt(r.get('kubelet_cpu_busy'), 2)}) |")
    return "\n".join(rows)


def markdown(doc: dict[str, Any], *, results_file: Path, images: list[Path]) -> str:
    try:
        shown = results_file.resolve().relative_to(Path(__file__).resolve().parents[1])
    except ValueError:
        shown = results_file
    pictures = "\n".join(f"![{p.stem}](img/{p.name})" for p in images)
    capped = any(r["capped"] for r in doc["results"])
    return "\n".join([
        f"Run of {doc['generated']} ({doc['machine']['cpus']} cores, `{doc['command'].strip()}`, "
        f"{doc['bench_seconds']:.0f} s; results in `{shown}`). N = {doc['tasks']} tasks per configuration; "
        f"Airflow {doc['versions']['apache-airflow-core']}, cncf.kubernetes provider "
        f"{doc['versions']['apache-airflow-providers-cncf-kubernetes']}.",
        "",
        "Headline (each ratio from figures measured in the same run at that latency; KE = the "
        "KubernetesExecutor):",
        "",
        headline(doc),
        "",
        *([f"Launchers against the raw client with as many creates in flight ({doc['equal_rounds']} alternating "
            f"rounds of {doc.get('equal_pods', doc['tasks'])} creates per side, medians; no kubelet in these "
            "namespaces):", "",
            equal_table(doc), ""] if doc.get("equal_concurrency") else []),
        "All figures:",
        "",
        full_table(doc),
        "",
        *(["\\* stopped at the phase's time limit "
           f"({doc['cap_seconds']:.0f} s) before all N tasks were terminal: pods/s is over what it created by "
           "then, CPU per task over the tasks that finished.", ""] if capped else []),
        pictures,
    ])


def update_docs(path: Path, table: str) -> None:
    """Put ``table`` between the markers of ``path`` (the markers must be there)."""
    text = path.read_text()
    if BEGIN not in text or END not in text:
        raise RuntimeError(f"{path} has no {BEGIN} ... {END} section")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.versus_report <results.json> [--no-docs]``: print the tables (and put them into
    docs/benchmarks.md) from a results file, the plots' paths being the usual ones."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m bench.versus_report")
    parser.add_argument("results")
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args(argv)
    repo = Path(__file__).resolve().parents[1]
    images = [repo / "docs" / "img" / f"versus-{n}.png" for n in ("throughput", "scheduler-cpu", "heartbeat")]
    table = markdown(json.loads(Path(args.results).read_text()), results_file=Path(args.results), images=images)
    print(table)
    if not args.no_docs:
        update_docs(repo / "docs" / "benchmarks.md", table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
