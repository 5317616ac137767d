# The Sluicegate image used by docker-compose.yml (worker, simulator, ingress).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY streams ./streams
COPY connectors ./connectors
RUN pip install --no-cache-dir .
COPY sluicegate.toml docker/sluicegate.docker.toml ./
ENTRYPOINT ["sluicegate"]
