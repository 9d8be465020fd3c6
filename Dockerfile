# One image for every vocfleet role (scheduler, workers, migration step); the role is the command.
# PyPI's torch wheels carry their CUDA libraries: GPU hosts need only the NVIDIA driver and the
# NVIDIA container toolkit.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 VOCFLEET_DATA_DIR=/data
WORKDIR /app
COPY pyproject.toml README.md ./
COPY vocfleet ./vocfleet
COPY model ./model
COPY worker ./worker
COPY scheduler ./scheduler
COPY db ./db
RUN pip install ".[s3]" && useradd --create-home vocfleet && mkdir -p /data /artifacts /cache && chown vocfleet /data /artifacts /cache
USER vocfleet
ENTRYPOINT ["vocfleet"]
CMD ["--help"]
