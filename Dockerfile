# kubestream images. Targets:
#   launcher  kubestream and its dependencies, no Airflow: `kubestream launcher|watcher|janitor|status`
#   airflow   Airflow with kubestream added (scheduler, api-server, dag-processor, task pods)
#
#   docker build --target launcher -t kubestream/launcher:0.1.0 .
#   docker build --target airflow -t kubestream/airflow:0.1.0 .
#
# A base without Python (e.g. a plain Debian rootfs) works too: pass INSTALL_PYTHON=apt and the same
# base for both targets; the airflow target then installs Airflow $AIRFLOW_VERSION into a venv.
# pip trusts an extra CA bundle when one is given as the build secret `pip_cert`
# (`--secret id=pip_cert,src=<bundle>`); nothing machine-specific is baked into the image.

ARG PYTHON_BASE=python:3.11-slim
ARG AIRFLOW_BASE=apache/airflow:3.3.2

# ---- the Python runtime: the base's own, or Debian's python3 when INSTALL_PYTHON=apt -----------------
FROM ${PYTHON_BASE} AS python
ARG INSTALL_PYTHON=none
RUN if [ "$INSTALL_PYTHON" = apt ]; then \
        apt-get update -qq \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
           python3 python3-venv ca-certificates \
        && rm -rf /var/lib/apt/lists/* /var/cache/apt/*; \
    elif [ "$INSTALL_PYTHON" != none ]; then echo "INSTALL_PYTHON must be apt or none" >&2; exit 1; fi \
    && python3 --version

# ---- build: the kubestream wheel and a venv with it and its dependencies -----------------------------
FROM python AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kubestream ./kubestream
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && python3 -m venv /opt/kubestream \
    && /opt/kubestream/bin/pip wheel --no-cache-dir --disable-pip-version-check -q --no-deps -w /wheels . \
    && /opt/kubestream/bin/pip install --no-cache-dir --disable-pip-version-check -q /wheels/kubestream-*.whl \
    && /opt/kubestream/bin/pip uninstall -y -q pip \
    && rm -rf /src/build /src/*.egg-info

# ---- launcher / watcher / janitor --------------------------------------------------------------------
FROM python AS launcher
RUN useradd --system --uid 50000 --gid 0 --home-dir /home/kubestream --create-home kubestream
COPY --from=build /opt/kubestream /opt/kubestream
ENV PATH=/opt/kubestream/bin:$PATH \
    PYTHONUNBUFFERED=1
USER 50000
WORKDIR /home/kubestream
# liveness: this host's launcher refreshes its health key in Redis (the watcher's service overrides it)
HEALTHCHECK --interval=15s --timeout=10s --start-period=30s --retries=3 \
    CMD ["kubestream", "launcher", "--check"]
ENTRYPOINT ["kubestream"]
CMD ["launcher"]

# ---- Airflow with kubestream -------------------------------------------------------------------------
FROM ${AIRFLOW_BASE} AS airflow
ARG INSTALL_PYTHON=none
ARG AIRFLOW_VERSION=3.3.2
USER root
# The official image: kubestream goes into the airflow user's environment, next to Airflow.
# A base without Python (INSTALL_PYTHON=apt): Debian's python3, Airflow and kubestream in /opt/airflow-venv.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    --mount=type=secret,id=pip_cert,mode=0444 \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi; \
    set -e; \
    if [ "$INSTALL_PYTHON" = apt ]; then \
        apt-get update -qq; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            python3 python3-venv ca-certificates; \
        rm -rf /var/lib/apt/lists/* /var/cache/apt/*; \
        useradd --uid 50000 --gid 0 --home-dir /opt/airflow --create-home airflow; \
        python3 -m venv /opt/airflow-venv; \
        /opt/airflow-venv/bin/pip install --no-cache-dir --disable-pip-version-check -q \
            "apache-airflow[postgres]==${AIRFLOW_VERSION}" /wheels/kubestream-*.whl; \
        /opt/airflow-venv/bin/pip uninstall -y -q pip; \
    else \
        su airflow -s /bin/sh -c "${PIP_CERT:+PIP_CERT=$PIP_CERT} pip install --no-cache-dir --disable-pip-version-check -q \
            'apache-airflow==${AIRFLOW_VERSION}' /wheels/kubestream-*.whl"; \
    fi
ENV PATH=/opt/airflow-venv/bin:$PATH \
    AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__EXECUTOR=kubestream.executor.KubeStreamExecutor \
    PYTHONUNBUFFERED=1
USER 50000
WORKDIR /opt/airflow
# the official base keeps its entrypoint; services run e.g. `airflow scheduler`
