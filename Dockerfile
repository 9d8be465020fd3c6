# One image for every vocfleet role (scheduler, workers, migration step); the role is the command.
# PyPI's torch wheels carry their CUDA libraries: GPU hosts need only the NVIDIA driver and the
# NVIDIA container toolkit. torch 2.14 from PyPI is a CUDA 13 build: it needs a driver recent enough
# for CUDA 13 (the R580 series or newer); `vocfleet worker` refuses GPUs it cannot use, in one line.
FROM python:3.11-slim
# TORCH_HOME on the cache volume: the ImageNet weights (--init imagenet) are fetched once per host.
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 VOCFLEET_DATA_DIR=/data TORCH_HOME=/cache/torch
WORKDIR /app
COPY pyproject.toml README.md ./
COPY vocfleet ./vocfleet
COPY model ./model
COPY worker ./worker
COPY scheduler ./scheduler
COPY db ./db
RUN pip install ".[s3,export,web]" && useradd --create-home vocfleet && mkdir -p /data /artifacts /cache && chown vocfleet /data /artifacts /cache
USER vocfleet
ENTRYPOINT ["vocfleet"]
CMD ["--help"]
