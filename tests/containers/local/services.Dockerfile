# The stack's backing services for machines without an image registry (tests only): Debian's
# PostgreSQL, Redis and etcd on a local base; kube-apiserver is the locally built binary, mounted.
ARG BASE
FROM ${BASE}
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
       postgresql redis-server etcd-server etcd-client \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*
ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
