# syntax=docker/dockerfile:1
# One image for every process of the system; the command chooses which (docs/deployment.md):
#   api         uvicorn api.app:app --host 0.0.0.0 --port 8000 --no-access-log
#   ingest      python -m ingest
#   alerts      python -m alerts
#   delivery    python -m alerts.delivery
#   broker-sync python -m store.broker_sync --watch
#   migrate     python -m store.db
# Debian bookworm's own Python 3.11 in both stages: the interpreter the suite passes with, the
# same path for the virtual environment in both stages, and Pango and Noto CJK from the same
# distribution (WeasyPrint's compliance report PDFs).
# Built by hand only: the machine the project is tested on has no container engine, so the test
# suite parses this file (tests/test_deploy_manifests.py) but never builds it.

ARG DEBIAN_IMAGE=debian:bookworm-slim

FROM ${DEBIAN_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/ccs
ENV PATH=/opt/ccs/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# The lock first, so that a code change does not reinstall the packages: every file checked
# against its SHA-256, nothing resolved here (--no-deps), then pip's own consistency check.
COPY requirements.lock ./
RUN pip install --require-hashes --no-deps -r requirements.lock && pip check
COPY pyproject.toml ./
COPY geofence ./geofence
COPY ingest ./ingest
COPY alerts ./alerts
COPY api ./api
COPY console ./console
COPY simulators ./simulators
COPY store ./store
# Not editable: the runtime stage gets the installed package, not this source tree.
RUN pip install --no-deps . && python -m compileall -q /opt/ccs

FROM ${DEBIAN_IMAGE} AS runtime
# python3: the interpreter the virtual environment points at. Pango (and through it HarfBuzz,
# FreeType, fontconfig) and Noto CJK for WeasyPrint's PDFs; tini reaps children and passes
# signals, so SIGTERM reaches the process and it stops cleanly.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        python3 libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-noto-cjk \
        ca-certificates tini \
 && rm -rf /var/lib/apt/lists/*
# A fixed, unprivileged UID/GID (Kubernetes runAsUser, compose user:, volume ownership).
RUN groupadd --system --gid 10001 ccs \
 && useradd --system --uid 10001 --gid ccs --home-dir /var/lib/ccs --shell /usr/sbin/nologin ccs \
 && install -d -o ccs -g ccs -m 0750 /var/lib/ccs /var/lib/ccs/archive /var/lib/ccs/broker-auth \
        /var/lib/ccs/broker-data
COPY --from=build /opt/ccs /opt/ccs
# No secret here: CCS_SECRET_KEY, database and broker passwords come from the environment
# (compose env_file/secrets, a Kubernetes Secret). CCS_ENVIRONMENT=production makes the
# settings refuse the development key, a missing metrics token and SMTP passwords in clear.
# Logs: one JSON object a line on stdout, carrying each fix's id (store/observe.py).
ENV PATH=/opt/ccs/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    XDG_CACHE_HOME=/tmp/.cache \
    CCS_ENVIRONMENT=production \
    CCS_LOG_FORMAT=json \
    CCS_API_HOST=0.0.0.0 \
    CCS_HEALTH_HOST=0.0.0.0 \
    CCS_POSITIONS_ARCHIVE_DIR=/var/lib/ccs/archive
WORKDIR /var/lib/ccs
USER 10001:10001
EXPOSE 8000 9100
# Workers (CCS_HEALTH_PORT set) answer /livez on that port; the API answers /api/v1/livez.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request as u; p = os.environ.get('CCS_HEALTH_PORT'); u.urlopen(f'http://127.0.0.1:{p}/livez' if p else 'http://127.0.0.1:%s/api/v1/livez' % os.environ.get('CCS_API_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["uvicorn", "api.app:app", "--host", "0.0.0.0", "--port", "8000", "--no-access-log"]
