# CRM mail gateway container image.
#
#   Build (from the repository root):  docker build -t crm-mail-gateway .
#   Whole stack (PostgreSQL, migration, gateway, Prometheus): see deploy/README.md
#     docker compose -f deploy/compose.yaml up -d
#   Without a Docker engine (podman, chroot isolation), and on a machine that cannot
#   pull python:3.12-slim (a Debian base made with mmdebstrap), built and
#   smoke-tested for real:  deploy/image/build-and-smoke
#
# BASE: any Debian-like image with python3 (>= 3.11) and its venv module; the
# gateway goes into a virtualenv (/opt/venv), so a distribution Python marked
# "externally managed" (PEP 668) works as well as python:3.12-slim.
#
# Dependencies come from requirements.lock: exact versions, sha256-checked
# (pip --require-hashes), wheels only but for dkimpy (pure Python, source only),
# so no compiler is needed. dkimpy and the gateway itself are built against the
# locked setuptools (--no-build-isolation), so nothing unpinned is downloaded. Regenerate the lock with deploy/image/lock.
#
# Layout inside the image (all relative paths of gateway.toml resolve against
# /srv/gateway, the folder of the config file):
#   /opt/venv/                  the gateway and its dependencies (root-owned, read-only to it)
#   /srv/gateway/gateway.toml   the demo config (mount your own read-only over it)
#   /srv/gateway/rules/         the demo rules  (mount your own read-only over it)
#   /srv/gateway/keys/          DKIM private keys: a VOLUME, never baked into the image
#                               (the rules' key_file = "../keys/<domain>.<selector>.pem")
#   /srv/gateway/var/           pid file, Postfix recipient map, SQLite file (demo only)
#
# Secrets (DKIM keys, database password, smarthost credentials) are never copied
# in: only the lock, the package source, gateway.toml and rules/ are (.dockerignore
# keeps keys/, *.pem, var/, *.db, .venv/ and .git out of the build context).
# Pass the database and smarthost through GATEWAY_DATABASE_URL and
# GATEWAY_RELAY_URL at run time. A build machine that reaches PyPI through its own
# CA or pip config mounts them for the build only (podman build -v ...:ro; see
# deploy/image/build-and-smoke), so they never land in a layer.
ARG BASE=python:3.12-slim

# --- build: the virtualenv ------------------------------------------------------------
FROM ${BASE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

RUN python3 -m venv /opt/venv

# Dependencies first: this layer is reused while only the gateway's code changes.
# The locked setuptools goes in first, on its own: it is the build backend of
# dkimpy, quotequail and authres (published as source only) and of the gateway, and
# --no-build-isolation keeps pip from fetching an unpinned one. Every other package
# must be a wheel.
COPY requirements.lock /tmp/build/
RUN awk '/^setuptools==/ {p = 1} p {print} p && !/\\$/ {exit}' \
        /tmp/build/requirements.lock >/tmp/build/setuptools.lock \
 && /opt/venv/bin/pip install --require-hashes --no-deps -r /tmp/build/setuptools.lock \
 && /opt/venv/bin/pip install --require-hashes --no-build-isolation --use-pep517 \
        --only-binary=:all: --no-binary=dkimpy,quotequail,authres -r /tmp/build/requirements.lock

COPY pyproject.toml README.md LICENSE /tmp/build/
COPY gateway /tmp/build/gateway
# --no-deps: everything it needs is already installed from the lock; pip check
# proves the lock satisfies pyproject.toml. setuptools was only the build backend.
RUN /opt/venv/bin/pip install --no-deps --no-build-isolation /tmp/build \
 && /opt/venv/bin/pip uninstall --yes setuptools \
 && /opt/venv/bin/pip check \
 && /opt/venv/bin/gateway --help >/dev/null

# --- the image ------------------------------------------------------------------------
FROM ${BASE}

# PATH spelled out: a base imported from a root filesystem (podman import) has none.
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# Unprivileged user; every listener port is above 1024, so no capability is needed.
RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid gateway --home-dir /srv/gateway \
            --no-create-home --shell /usr/sbin/nologin gateway

COPY --from=build /opt/venv /opt/venv

WORKDIR /srv/gateway

# Demo configuration and rules; replace them with read-only mounts in production.
COPY gateway.toml ./
COPY rules ./rules

# Writable state owned by the gateway user. A named volume mounted on an empty
# directory of the image takes over its ownership, so keys/ and var/ stay writable.
RUN mkdir -p keys var \
 && chown gateway:gateway keys var \
 && chmod 0700 keys
VOLUME ["/srv/gateway/keys"]

USER gateway

# Listen on all interfaces inside the container (the demo gateway.toml says
# 127.0.0.1). Publish LMTP/SMTP only to your MTA: LMTP has no authentication.
ENV GATEWAY_CONFIG=/srv/gateway/gateway.toml \
    GATEWAY_LMTP_LISTEN=0.0.0.0:8024 \
    GATEWAY_SMTP_LISTEN=0.0.0.0:8025 \
    GATEWAY_SUBMISSION_LISTEN=0.0.0.0:8587 \
    GATEWAY_METRICS_LISTEN=0.0.0.0:9125

#      LMTP SMTP submission metrics(/metrics /healthz /readyz)
EXPOSE 8024 8025 8587 9125

# Ready = database reachable, rules loaded, listeners bound (/readyz answers 200;
# 503 otherwise, which urlopen raises). The base has no curl; python is the venv's.
# (OCI-format images drop HEALTHCHECK: podman build needs --format docker.)
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9125/readyz', timeout=4)"]

# SIGTERM (docker stop) stops gracefully: no new sessions, 421 4.3.2 to new
# commands, transactions under way get limits.shutdown_grace_seconds (30 s) to
# finish. Give the container more than that: docker stop -t 40 / compose
# stop_grace_period: 40s. SIGHUP (docker kill -s HUP) reloads the rules.
STOPSIGNAL SIGTERM
CMD ["gateway", "serve", "--config", "/srv/gateway/gateway.toml"]
