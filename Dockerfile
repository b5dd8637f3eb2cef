# Tollway container image.
#   docker build -t tollway .
#   docker run -d -p 3000:3000 -v tollway-data:/data tollway
# Stage 1 builds the wheel and installs it with its dependencies into a virtual environment;
# stage 2 is a slim runtime holding only that environment, run by the unprivileged user "tollway".

FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# Compilers only for a dependency without a wheel for this platform; they stay in this stage.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY tollway ./tollway

# The venv lives at the same path in both stages (its scripts name their interpreter absolutely).
RUN python -m pip wheel --no-deps --wheel-dir /dist . \
 && python -m venv /opt/tollway/.venv \
 && /opt/tollway/.venv/bin/pip install --upgrade pip \
 && /opt/tollway/.venv/bin/pip install /dist/tollway-*.whl \
 && /opt/tollway/.venv/bin/tollway --version


FROM python:3.11-slim AS runtime

RUN groupadd --system --gid 1000 tollway \
 && useradd --system --uid 1000 --gid tollway --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin tollway \
 && mkdir -p /data \
 && chown tollway:tollway /data

COPY --from=builder /opt/tollway/.venv /opt/tollway/.venv

ENV PATH=/opt/tollway/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    PORT=3000 \
    SQLITE_PATH=/data/tollway.db

# SQLite database, generated secrets (.tollway-secrets.json) and the node counters live in /data.
WORKDIR /data
VOLUME ["/data"]
USER tollway
EXPOSE 3000

# Graceful stop: 20 s for requests in flight, then logs are flushed and quota leases returned
# (30 s in all); give the container at least 35 s (docker stop -t 35, compose stop_grace_period).
STOPSIGNAL SIGTERM

# The slim image has no curl: ask /api/status with the standard library.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '3000') + '/api/status', timeout=4); sys.exit(0 if r.status == 200 else 1)"]

ENTRYPOINT ["tollway"]
CMD ["serve"]
