# syntax=docker/dockerfile:1
# Tidings in a container. Build: `docker build -t tidings .`; run with docker-compose.yml (Tidings
# and PostgreSQL), or alone on SQLite:
#   docker run -d -v tidings:/var/lib/tidings -e TIDINGS_SERVER__HOSTNAME=mail.example.org \
#     -p 25:25 -p 465:465 -p 587:587 -p 143:143 -p 993:993 -p 110:110 -p 995:995 -p 80:80 tidings
# tests/integration/test_deploy.py runs the same steps without Docker: build the wheel, install
# it in a fresh virtualenv, give the interpreter cap_net_bind_service, run the entrypoint as an
# unprivileged user.

ARG PYTHON_VERSION=3.12

# --- build: Tidings' wheel and the wheels of everything it depends on ---------------------------
FROM python:${PYTHON_VERSION}-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# Every dependency ships manylinux wheels, so no compiler is needed; building them here keeps
# pip's downloads and caches out of the final image.
RUN python -m pip wheel --no-cache-dir --wheel-dir /wheels .

# --- final: the wheels installed, nothing else -------------------------------------------------
FROM python:${PYTHON_VERSION}-slim

# A fixed uid/gid, so a bind-mounted data or certificate directory can be chowned to it.
ARG TIDINGS_UID=2525

# Ports below 1024 without root: the interpreter gets the one capability it needs as a file
# capability. That works under every runtime that leaves CAP_NET_BIND_SERVICE in the bounding set
# (Docker's and Podman's defaults, Kubernetes, `cap_drop: [ALL]` with `cap_add:
# [NET_BIND_SERVICE]`), with `docker run` as with compose and with host networking, where
# the alternative, the net.ipv4.ip_unprivileged_port_start=0 sysctl, cannot be set per container.
# It does not survive `no-new-privileges` (the kernel then ignores file capabilities): use the
# sysctl instead in that case. The grant covers every Python process in the container, which
# runs nothing but Tidings, so it costs little over a per-program one.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libcap2-bin \
 && rm -rf /var/lib/apt/lists/* \
 && setcap cap_net_bind_service=+ep "$(readlink -f /usr/local/bin/python3)"

# The wheels come in through a bind mount of the build stage, so they take no layer of their own.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m pip install --no-cache-dir --root-user-action=ignore --no-index \
        --find-links /wheels tidings

COPY --chmod=0755 deploy/docker-entrypoint.sh /usr/local/bin/tidings-entrypoint
COPY --chmod=0755 deploy/healthcheck.py /usr/local/bin/tidings-healthcheck

# The data directory (SQLite database if no PostgreSQL, the generated certificate, the config
# written on first start) belongs to tidings alone: mode 0700, and Tidings creates everything
# in it 0600 (it runs with umask 077).
RUN groupadd --system --gid "${TIDINGS_UID}" tidings \
 && useradd --system --uid "${TIDINGS_UID}" --gid tidings --home-dir /var/lib/tidings \
            --no-create-home --shell /usr/sbin/nologin tidings \
 && install -d -o tidings -g tidings -m 0700 /var/lib/tidings
VOLUME /var/lib/tidings

# Configuration is the config file the entrypoint writes on first start plus these overrides;
# set any other key as TIDINGS_<SECTION>__<KEY> (docker-compose.yml sets the database URL and
# the host name). The listeners take the real ports on every interface of the container.
ENV TIDINGS_CONFIG=/var/lib/tidings/tidings.toml \
    TIDINGS_SERVER__DATA_DIR=/var/lib/tidings \
    TIDINGS_LISTEN__SMTP=0.0.0.0:25 \
    TIDINGS_LISTEN__SUBMISSION=0.0.0.0:587 \
    TIDINGS_LISTEN__SUBMISSIONS=0.0.0.0:465 \
    TIDINGS_LISTEN__IMAP=0.0.0.0:143 \
    TIDINGS_LISTEN__IMAPS=0.0.0.0:993 \
    TIDINGS_LISTEN__POP3=0.0.0.0:110 \
    TIDINGS_LISTEN__POP3S=0.0.0.0:995 \
    TIDINGS_LISTEN__HTTP=0.0.0.0:80 \
    TIDINGS_LISTEN__HTTPS=0.0.0.0:443 \
    PYTHONUNBUFFERED=1

USER tidings
WORKDIR /var/lib/tidings
EXPOSE 25 465 587 143 993 110 995 80 443

# The health check asks the HTTP listener (listen.http, 0.0.0.0:80 above) for /healthz, which
# answers 200 only while the database is reachable. tidings-healthcheck reads the same config
# as the server (file and TIDINGS_* variables), so it follows a changed listen.http; it uses
# Python's urllib because the slim image has no curl or wget, and connects over loopback
# (0.0.0.0 is not an address to connect to). With the HTTP listener disabled it checks that the
# SMTP listener greets instead.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["tidings-healthcheck"]

# `serve` applies any pending database migrations before it listens (Store.open migrates, under
# a PostgreSQL advisory lock when several containers start at once); the entrypoint writes the
# config with `tidings init` first if there is none yet. Any other command runs as
# `tidings ARGS`: `docker compose exec tidings tidings user list` or
# `docker compose run --rm tidings domain list`.
ENTRYPOINT ["tidings-entrypoint"]
CMD ["serve"]
