# syntax=docker/dockerfile:1
#
# gearstore server image.
#
#   docker build -t gearstore .
#   docker run -d --name gearstore -p 4730:4730 -v gearstore-data:/var/lib/gearstore gearstore
#
# Stage 1 builds the gearstore wheel and a wheel for every dependency (all of them ship
# binary wheels, so no compiler is needed even there); stage 2 installs from that
# directory only, so the final image holds no compiler, no pip cache and no source tree.
# Settings are GEARSTORE_* environment variables, so a compose file or a Kubernetes
# manifest can switch the store without repeating the command line (the command line
# still wins over the environment). docs/deployment.md describes the variants.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
WORKDIR /src
# Only what the wheel is built from (see .dockerignore), so a test edit does not bust
# the cache of this layer.
COPY pyproject.toml README.md ./
COPY gearstore/ gearstore/
COPY migrations/ migrations/
RUN pip wheel --no-cache-dir --disable-pip-version-check --wheel-dir /wheels \
        ".[fast,postgres,mysql,memcached]"


FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="gearstore" \
      org.opencontainers.image.description="Gearman job server whose background jobs survive restarts and crashes" \
      org.opencontainers.image.licenses="MIT"

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Mounted, not copied: the wheels never become a layer of the final image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels \
        "gearstore[fast,postgres,mysql,memcached]"

# A fixed numeric uid, so Kubernetes' runAsNonRoot can check it and a bind-mounted
# host directory can be chown'ed to it (chown 10001:10001 DIR).
RUN groupadd --system --gid 10001 gearstore \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/gearstore \
        --no-create-home --shell /usr/sbin/nologin gearstore \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/gearstore

# The default store: SQLite on the volume. Replace GEARSTORE_QUEUE_TYPE and GEARSTORE_DB
# (docker-compose.yml does, per variant) to use another store.
ENV GEARSTORE_QUEUE_TYPE=sqlite \
    GEARSTORE_DB=/var/lib/gearstore/gearstore.db \
    GEARSTORE_PORT=4730 \
    GEARSTORE_SHUTDOWN_TIMEOUT=30

VOLUME ["/var/lib/gearstore"]
WORKDIR /var/lib/gearstore
USER 10001:10001
EXPOSE 4730

# SIGTERM starts gearstore's graceful stop: it stops accepting, lets running jobs finish
# for up to GEARSTORE_SHUTDOWN_TIMEOUT seconds, flushes the store and exits 0. Give the
# container more than that: docker stop -t 40, compose stop_grace_period: 40s.
STOPSIGNAL SIGTERM

# Healthy means the server answers the admin "version" command, i.e. the store was
# opened and replayed and the port accepts connections. It uses GEARSTORE_PORT, so
# change the port through that variable rather than -p.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, socket; s = socket.create_connection(('127.0.0.1', int(os.environ.get('GEARSTORE_PORT') or 4730)), 3); s.sendall(b'version\\n'); raise SystemExit(0 if s.recv(64).startswith(b'OK') else 1)"]

ENTRYPOINT ["gearstore"]
# gearstore binds 127.0.0.1 by default; in a container it must listen on every
# interface to be reachable through the published port.
CMD ["-L", "0.0.0.0"]
