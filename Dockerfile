# CRM mail gateway container image.
#
#   Build (from the repository root):  docker build -t crm-mail-gateway .
#   Whole stack (PostgreSQL, migration, gateway, Prometheus): see deploy/README.md
#     docker compose -f deploy/compose.yaml up -d
#
# Layout inside the image (all relative paths of gateway.toml resolve against
# /srv/gateway, the folder of the config file):
#   /srv/gateway/gateway.toml   the demo config (mount your own read-only over it)
#   /srv/gateway/rules/         the demo rules  (mount your own read-only over it)
#   /srv/gateway/keys/          DKIM private keys: a VOLUME, never baked into the image
#                               (the rules' key_file = "../keys/<domain>.<selector>.pem")
#   /srv/gateway/var/           pid file, Postfix recipient map, SQLite file (demo only)
#
# Secrets (DKIM keys, database password, smarthost credentials) are never copied
# in: only the package source, gateway.toml and rules/ are (keys/, *.pem, var/ and
# *.db stay on the build machine). Pass the database and smarthost through
# GATEWAY_DATABASE_URL and GATEWAY_RELAY_URL at run time.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Unprivileged user; every listener port is above 1024, so no capability is needed.
RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid gateway --home-dir /srv/gateway \
            --no-create-home --shell /usr/sbin/nologin gateway

WORKDIR /srv/gateway

# Install the package first (its layer is reused while only config/rules change).
# All dependencies ship manylinux wheels (psycopg[binary], cryptography, uvloop),
# so the slim image needs no compiler.
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip install --no-cache-dir . \
 && rm -rf gateway build ./*.egg-info pyproject.toml README.md

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
# 503 otherwise, which urlopen raises). python:3.12-slim has no curl.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9125/readyz', timeout=4)"]

# SIGTERM (docker stop) stops gracefully: no new sessions, 421 4.3.2 to new
# commands, transactions under way get limits.shutdown_grace_seconds (30 s) to
# finish. Give the container more than that: docker stop -t 40 / compose
# stop_grace_period: 40s. SIGHUP (docker kill -s HUP) reloads the rules.
STOPSIGNAL SIGTERM
CMD ["gateway", "serve", "--config", "/srv/gateway/gateway.toml"]
