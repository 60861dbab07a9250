# HAProxy 2.6 (Debian 12's) for docker/compose.yaml, built from the same base
# as the server image, so the stack needs no registry but Debian's mirror.
# (With Docker Hub at hand, the official haproxy:2.6 image works too: mount
# haproxy.cfg at /usr/local/etc/haproxy/haproxy.cfg.)
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends haproxy \
 && rm -rf /var/lib/apt/lists/*
COPY haproxy.cfg /etc/haproxy/haproxy.cfg
USER haproxy
EXPOSE 8080 8404
STOPSIGNAL SIGUSR1
# -W master-worker, -db foreground; the config is checked at every start.
ENTRYPOINT ["haproxy", "-W", "-db", "-f", "/etc/haproxy/haproxy.cfg"]
