# CRM mail gateway. Build: docker build -t crm-mail-gateway .
# Run:   docker run -p 8024:8024 -p 8025:8025 -v gateway-data:/srv/gateway/var crm-mail-gateway
FROM python:3.12-slim
RUN useradd --system --home /srv/gateway gateway
WORKDIR /srv/gateway
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip install --no-cache-dir .
COPY gateway.toml ./
COPY rules ./rules
RUN mkdir -p var && chown gateway var
USER gateway
ENV GATEWAY_LMTP_LISTEN=0.0.0.0:8024 GATEWAY_SMTP_LISTEN=0.0.0.0:8025
EXPOSE 8024 8025
CMD ["gateway", "serve", "--config", "/srv/gateway/gateway.toml"]
