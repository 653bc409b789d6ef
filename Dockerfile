# crossdock in a container: slim Python, non-root, tini as PID 1 so SIGTERM reaches the server
# (and its graceful shutdown runs), bound to 0.0.0.0 inside the container.
# Protected mode is off here, as in Redis's official image: clients arrive through Docker's port mapping from a
# non-loopback address and would all be refused. Publish the port beyond localhost only with a password:
#   docker run -e CROSSDOCK_REQUIREPASS=... -p 7379:7379 crossdock
# Builder stage: gcc compiles the parser core (mypyc) into a wheel; only the wheels reach the runtime image.
FROM python:3.11-slim-bookworm AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY server ./server
COPY clients ./clients
COPY loadtest ./loadtest
# The wheels of crossdock (with its compiled core) and of every dependency, for an offline install below.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CROSSDOCK_HOST=0.0.0.0 \
    CROSSDOCK_PORT=7379 \
    CROSSDOCK_PROTECTED_MODE=no

# tini reaps zombies and forwards signals to the server; no compiler here (the builder stage made the wheels).
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY --from=builder /wheels /tmp/wheels
RUN pip install --no-cache-dir --no-index --find-links /tmp/wheels /tmp/wheels/crossdock-*.whl \
    && rm -rf /tmp/wheels \
    && groupadd --system --gid 10001 crossdock \
    && useradd --system --uid 10001 --gid 10001 --no-create-home crossdock

USER 10001:10001
EXPOSE 7379

# Healthy means the server answers PING on loopback with +PONG, or -NOAUTH when a password is set; it follows
# CROSSDOCK_PORT and speaks TLS when CROSSDOCK_TLS_CERT is set (server/observability/healthcheck.py).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-m", "server.observability.healthcheck"]

ENTRYPOINT ["/usr/bin/tini", "--", "crossdock", "serve"]
CMD ["--mode", "async", "--cpu", "pool"]
