# The Spotrun image: the operator (its ENTRYPOINT), and the SDK and CLI for task images and the
# directory-mode containers. Python is pinned by version; pin by digest in a release pipeline.

FROM python:3.11.13-slim-bookworm AS build
WORKDIR /src
RUN pip install --no-cache-dir build==1.3.0
COPY pyproject.toml README.md ./
COPY sdk sdk
COPY operator operator
RUN python -m build --wheel --outdir /dist

FROM python:3.11.13-slim-bookworm
# No bytecode files (the root filesystem may be read-only) and unbuffered logs.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /dist /dist
# The wheel built above is this exact version; its dependencies are bounded in pyproject.toml.
# hadolint ignore=DL3013
RUN for wheel in /dist/*.whl; do pip install --no-cache-dir "${wheel}[operator]"; done \
    && rm -rf /dist \
    && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin spotrun
# The examples, so that examples/*-taskrun.yaml run on this image as they are.
COPY examples /opt/spotrun/examples
USER 10001
WORKDIR /tmp
ENTRYPOINT ["python", "-m", "spotrun_operator"]
