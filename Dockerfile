# The image every raymae cluster manifest uses: CUDA runtime, Python, a pinned Ray, raymae.
# Build: docker build -t raymae:0.1.0 .
FROM nvidia/cuda:12.9.1-cudnn-runtime-ubuntu24.04

ARG RAY_VERSION=2.60.0
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/raymae \
    PATH=/opt/raymae/bin:$PATH

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev ca-certificates tini rsync \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/raymae

WORKDIR /opt/raymae-src
COPY pyproject.toml README.md ./
COPY raymae ./raymae
COPY jobs ./jobs
RUN pip install --upgrade pip \
 && pip install "ray[train,data,default]==${RAY_VERSION}" boto3 . \
 && python -c "import ray, raymae, timm, torch; assert ray.__version__ == '${RAY_VERSION}'"

# Run as an unprivileged user (uid 1000, as KubeRay's examples expect); the Ubuntu
# base image already has "ubuntu" with uid 1000, so it makes room first.
# rsync and boto3 above are what Ray's AWS cluster launcher needs inside the image.
RUN userdel -r ubuntu 2>/dev/null; useradd --create-home --uid 1000 ray && chown -R ray /opt/raymae-src
USER ray
WORKDIR /home/ray
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["raymae", "--help"]
