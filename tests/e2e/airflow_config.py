"""Airflow settings for e2e modules, passed through ``pytest.mark.airflow_config(**...)``."""

# a dead scheduler's tasks become adoptable within seconds
FAST_ADOPTION = {
    "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "8",
    "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "3",
}

# kubestream (the default: listed first) and the LocalExecutor in one deployment; tasks pick one with
# `executor=`. Parallelism is small: the LocalExecutor forks that many workers in the scheduler.
KUBESTREAM_BESIDE_LOCAL = {
    "AIRFLOW__CORE__EXECUTOR": "kubestream.executor.KubeStreamExecutor,LocalExecutor",
    "AIRFLOW__CORE__PARALLELISM": "4",
}
