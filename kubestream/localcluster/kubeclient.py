"""Build a Kubernetes API client from settings or a kubeconfig, explicitly (no global config)."""

from __future__ import annotations

from kubernetes import client, config


def api_client(kubeconfig: str = "", context: str = "", *, pool_size: int = 16) -> client.ApiClient:
    """An ApiClient for ``kubeconfig`` (empty: in-cluster, then ~/.kube/config)."""
    configuration = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, context=context or None, client_configuration=configuration)
    else:
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            config.load_kube_config(context=context or None, client_configuration=configuration)
    configuration.connection_pool_maxsize = pool_size
    configuration.retries = False
    return client.ApiClient(configuration)
