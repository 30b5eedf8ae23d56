# syntax=docker/dockerfile:1
# One image, four entry points: `docker run IMAGE services.<name>` (ENTRYPOINT is `python -m`).
#
# Targets:
#   runtime (default, production): the services and their runtime dependencies only, at the
#           versions and hashes of requirements-runtime.lock; no emulators, tests, dev tools or pip.
#   dev     the runtime plus the emulators and what they need (requirements-emulators.lock: mongoeco;
#           no test or lint tools) and the sample instances, for the `demo` compose profile:
#           `docker build --target dev -t kabanero-otc:dev .`
#
# No network inside the build: the wheels come from ./wheels, downloaded beforehand and checked
# against the lock's hashes (scripts/wheelhouse.sh; README "Docker Compose"). Any image with CPython
# 3.13 as `python3`, groupadd and useradd works as the base: the official python image by default,
# a Debian trixie image made with debootstrap in `make compose-check`.
ARG PYTHON_IMAGE=python:3.13-slim

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin app

# --- production virtualenv: [project.dependencies] and their closure, hash-checked, offline ---
FROM base AS build-runtime
WORKDIR /src
# No pip in the virtualenv: pip runs from its (hash-checked) wheel in the wheelhouse.
RUN python3 -m venv --without-pip /opt/venv
COPY requirements-runtime.lock pyproject.toml README.md ./
RUN --mount=type=bind,source=wheels,target=/wheels \
    /opt/venv/bin/python "$(ls /wheels/pip-*.whl)/pip" install --no-index --find-links /wheels \
      --require-hashes -r requirements-runtime.lock
# Only services/, shared/ and the operators' CLI (kotc_cli/, `kabanero-otc`) are copied, so the
# package build cannot pick up emulators/ or tests/.
COPY shared ./shared
COPY services ./services
COPY kotc_cli ./kotc_cli
# The project itself (no hash: it is this source tree); its build backend comes from the wheelhouse.
RUN --mount=type=bind,source=wheels,target=/wheels \
    /opt/venv/bin/python "$(ls /wheels/pip-*.whl)/pip" install --no-index --find-links /wheels --no-deps . \
 && /opt/venv/bin/python "$(ls /wheels/pip-*.whl)/pip" check

# --- dev virtualenv: the runtime's plus what the emulators need (requirements-emulators.lock: no test
# or lint tools), and the emulators ---
FROM build-runtime AS build-dev
COPY requirements-emulators.lock ./
RUN --mount=type=bind,source=wheels,target=/wheels \
    /opt/venv/bin/python "$(ls /wheels/pip-*.whl)/pip" install --no-index --find-links /wheels \
      --require-hashes -r requirements-emulators.lock
COPY emulators ./emulators
RUN --mount=type=bind,source=wheels,target=/wheels \
    /opt/venv/bin/python "$(ls /wheels/pip-*.whl)/pip" install --no-index --find-links /wheels --no-deps --force-reinstall . \
 && /opt/venv/bin/python "$(ls /wheels/pip-*.whl)/pip" check

FROM base AS dev
COPY --from=build-dev /opt/venv /opt/venv
COPY deploy/samples /app/samples
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["python", "-m"]
CMD ["emulators.kube", "--host", "0.0.0.0", "--port", "8001", "--crds", "tekton-v0.11.3", "openshift-pipelines-operator", "--seed", "/app/samples/kabanero-sample.yaml", "/app/samples/tekton-sample.yaml"]

# --- production image (last stage = default target) ---
FROM base AS runtime
# VERSION follows pyproject.toml (tests/unit/test_manifests.py); REVISION and SOURCE are passed by
# whoever builds (`make compose-check` passes the git commit and origin).
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="kabanero-otc" \
      org.opencontainers.image.description="Kabanero <-> IBM Open Toolchain integration services" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"
COPY --from=build-runtime /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    LOG_FORMAT=json \
    HTTP_PORT=8080 \
    BUILD_VERSION=${VERSION}
# An empty working directory: `python -m` puts it on sys.path, so it must hold no code.
WORKDIR /app
# Numeric user so Kubernetes can verify runAsNonRoot.
USER 10001:10001
EXPOSE 8080
# Liveness (vital tasks alive) on the service's HTTP_PORT; orchestrators may override. An argv list
# without spaces (shared/probe.py): podman and Docker split `python -c "..."` strings differently.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-m", "shared.probe", "/healthz"]
ENTRYPOINT ["python", "-m"]
CMD ["services.broker_api"]
