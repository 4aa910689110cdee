# syntax=docker/dockerfile:1
#
# Meoring Hub: one image for all of the hub's processes. The command picks the process:
#   docker run IMAGE serve --no-worker --no-mllp   # HTTP app: /healthz /readyz /metrics, CDS Hooks
#   docker run IMAGE worker                        # translate + deliver inbox messages
#   docker run IMAGE mllp                          # HL7 v2 MLLP listener
#   docker run IMAGE db upgrade                    # apply store migrations, then exit
# Configuration comes from MEORING_<SECTION>__<KEY> environment variables (docs/configuration.md).

# Stage 1: the compiled translation hot path (hub/accel.py: mypyc, needs a C compiler). The
# final image only receives the built extensions; they are used because they were built from
# exactly the sources installed there (same wheel, same digest).
FROM python:3.11.13-slim-bookworm AS accel
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /tmp/meoring-src
COPY . .
RUN pip install --no-cache-dir . mypy \
 && MEORING_ACCEL_DIR=/opt/meoring/accel meoring accel build

FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MEORING_HOME=/var/lib/meoring \
    MEORING_DATA_DIR=/var/lib/meoring

# Unprivileged user with a fixed uid/gid so volume ownership is predictable.
RUN groupadd --system --gid 10001 meoring \
 && useradd --system --uid 10001 --gid meoring --home-dir /var/lib/meoring \
        --no-create-home --shell /usr/sbin/nologin meoring \
 && install -d -o meoring -g meoring -m 0750 /var/lib/meoring

# Install the package (core only; the `ai` extra is opt-in: docker build --build-arg EXTRAS=ai).
ARG EXTRAS=""
WORKDIR /tmp/meoring-src
COPY . .
RUN if [ -n "$EXTRAS" ]; then pip install ".[$EXTRAS]"; else pip install .; fi \
 && cd / && rm -rf /tmp/meoring-src

COPY --from=accel /opt/meoring/accel /opt/meoring/accel
ENV MEORING_ACCEL_DIR=/opt/meoring/accel

USER meoring:meoring
WORKDIR /var/lib/meoring
EXPOSE 8000 2575

ENTRYPOINT ["meoring"]
CMD ["serve"]
