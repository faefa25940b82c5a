"""kubestream's development kit: everything the tests, the benchmark and the local
demo need that a production install does not.

- ``cluster``: a real kube-apiserver + etcd on loopback (built from Debian's
  source package by ``provision.sh``, cached), with one kubeconfig per identity;
- ``kubelet`` / ``kubelet_rules``: the simulated kubelet that drives pods through the API;
- ``faultproxy``: TCP and HTTP proxies that add latency or answer 429/5xx;
- ``redisserver`` / ``postgres`` / ``airflowstack``: real servers on free ports;
- ``demo``: the local demo (``./scripts/demo``).

Run as ``python -m devkit cluster|kubelet|demo ...``. Not part of the kubestream
wheel; it lives beside ``kubestream/`` in the repository.
"""
