# syntax=docker/dockerfile:1
# Tierwise router image. Build from the repository root (BuildKit, the default since Docker 23):
#   docker build -f deploy/router.Dockerfile -t tierwise-router:0.1.0 .
# Files sent to the builder: deploy/router.Dockerfile.dockerignore (an allow-list).
#
# Two stages: `venv` builds the serving venv from requirements.txt (no torch), `serve` is python slim + that venv +
# the code, non-root (10001), writing nothing outside /tmp (read-only root filesystem friendly).
# The config defaults to the bundled tierwise.example.yaml; mount your own and pass --config (compose and the Helm
# chart mount theirs at /etc/tierwise/tierwise.yaml). Provider keys come from the environment variables that the
# config's api_key_env names, never from the image.
#
# Pin the base by digest for reproducible builds: --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:...
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# checkov does not resolve ARGs in FROM; the default above is a version tag (tests/test_deploy.py checks it).
# checkov:skip=CKV_DOCKER_7:FROM ${PYTHON_IMAGE} defaults to python:3.11-slim-bookworm, a version tag, not latest

# ---------------------------------------------------------------------------------------------- venv (serving deps)
FROM ${PYTHON_IMAGE} AS venv
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements.txt /src/requirements.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv /opt/venv \
 && /opt/venv/bin/pip install -r /src/requirements.txt \
 && if /opt/venv/bin/pip show torch >/dev/null 2>&1; then echo "torch must not be in the serving venv" >&2; exit 1; fi

# ---------------------------------------------------------------------------------------------- serve
FROM ${PYTHON_IMAGE} AS serve
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="tierwise-router" \
      org.opencontainers.image.description="Tierwise router: picks the cheapest model tier that answers well, over gRPC and OpenAI-compatible HTTP" \
      org.opencontainers.image.version="${VERSION}"
RUN groupadd --system --gid 10001 tierwise \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin tierwise
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    TIERWISE_ROUTER_LISTEN=0.0.0.0:50052 \
    TIERWISE_CONFIG=/app/tierwise.example.yaml
WORKDIR /app
COPY --from=venv /opt/venv /opt/venv
COPY tierwise/ /app/tierwise/
COPY router_service/ /app/router_service/
COPY tierwise.example.yaml /app/tierwise.example.yaml
COPY deploy/healthcheck.py /app/deploy/healthcheck.py
# Mount point of the shadow's label volume (deploy/compose.learn.yaml), owned by the user the router runs as: a new
# Docker volume takes the ownership of the directory it is mounted over, so 10001 can write to it.
RUN install -d -o 10001 -g 10001 /var/lib/tierwise/labels
# Bytecode is compiled now, as root, because the running container cannot write next to the sources.
RUN python -m compileall -q /app
USER 10001:10001
# 8080: the OpenAI-compatible HTTP API, served when --http-listen or TIERWISE_ROUTER_HTTP_LISTEN says where.
EXPOSE 50052 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "/app/deploy/healthcheck.py"]
ENTRYPOINT ["python", "-m", "router_service"]
