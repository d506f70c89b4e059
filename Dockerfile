# rxgate: slim, non-root image for the worker, the stream bridge and the audit API.
#   docker build -t rxgate .
#   docker run --rm rxgate health
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY validator ./validator
COPY workers ./workers
COPY protocols ./protocols
RUN python -m venv /opt/rxgate && /opt/rxgate/bin/pip install --no-compile . \
    && find /opt/rxgate -name '__pycache__' -prune -exec rm -rf {} +

FROM python:3.11-slim
ENV PATH=/opt/rxgate/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RXGATE_VAR_DIR=/var/lib/rxgate
RUN groupadd --system --gid 10001 rxgate \
    && useradd --system --uid 10001 --gid rxgate --home-dir /var/lib/rxgate --create-home --shell /usr/sbin/nologin rxgate
COPY --from=build /opt/rxgate /opt/rxgate
USER rxgate:rxgate
WORKDIR /var/lib/rxgate
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 CMD ["rxgate", "health"]
ENTRYPOINT ["rxgate"]
CMD ["serve"]
