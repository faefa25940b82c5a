"""Airflow settings for e2e modules, passed through ``pytest.mark.airflow_config(**...)``."""

# a dead scheduler's tasks become adoptable within seconds
FAST_ADOPTION = {
    "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "8",
    "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "3",
}
