# syntax=docker/dockerfile:1
# One image, four entry points: `docker run IMAGE services.<name>` (ENTRYPOINT is `python -m`).
#
# Targets:
#   runtime (default, production): the services and their runtime dependencies only, at the
#           versions pinned in requirements.lock; no emulators, tests, dev tools or pip.
#   dev     the whole lock (test tools, mongoeco) plus the emulators and the sample instance, for
#           the `demo` compose profile: `docker build --target dev -t kabanero-otc:dev .`
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

# --- production virtualenv: the project's declared dependencies, constrained to the lock's pins ---
FROM base AS build-runtime
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements.lock pyproject.toml README.md ./
# The lock is a full freeze of `.[dev]`; production installs only [project.dependencies] (and
# their transitive closure), every one pinned by the lock used as a constraints file.
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml','rb'))['project']['dependencies']))" \
      > runtime-requirements.txt \
 && pip install -c requirements.lock -r runtime-requirements.txt
# Only services/ and shared/ are copied, so the package build cannot pick up emulators/ or tests/.
COPY shared ./shared
COPY services ./services
RUN pip install --no-deps . \
 && pip check \
 && pip uninstall -y pip

# --- dev virtualenv: everything in the lock, plus the emulators ---
FROM base AS build-dev
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements.lock pyproject.toml README.md ./
RUN pip install -r requirements.lock
COPY shared ./shared
COPY services ./services
COPY emulators ./emulators
RUN pip install --no-deps . && pip check

FROM base AS dev
COPY --from=build-dev /opt/venv /opt/venv
COPY deploy/samples /app/samples
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["python", "-m"]
CMD ["emulators.kube", "--host", "0.0.0.0", "--port", "8001", "--seed", "/app/samples/kabanero-sample.yaml"]

# --- production image (last stage = default target) ---
FROM base AS runtime
LABEL org.opencontainers.image.title="kabanero-otc" \
      org.opencontainers.image.description="Kabanero <-> IBM Open Toolchain integration services"
COPY --from=build-runtime /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    LOG_FORMAT=json \
    HTTP_PORT=8080
# An empty working directory: `python -m` puts it on sys.path, so it must hold no code.
WORKDIR /app
# Numeric user so Kubernetes can verify runAsNonRoot.
USER 10001:10001
EXPOSE 8080
# Liveness (vital tasks alive) on the service's HTTP_PORT; orchestrators may override.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('HTTP_PORT', '8080'), timeout=2)"]
ENTRYPOINT ["python", "-m"]
CMD ["services.broker_api"]
