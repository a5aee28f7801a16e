# One image for every patchsight service; docker-compose.yml picks the command.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATCHSIGHT_LOG_FORMAT=json HF_HUB_OFFLINE=1
WORKDIR /app
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 curl \
    && rm -rf /var/lib/apt/lists/*
COPY requirements.lock requirements-nodeps.txt ./
RUN pip install --no-cache-dir -r requirements.lock \
    && pip install --no-cache-dir --no-deps -r requirements-nodeps.txt
COPY . .
RUN pip install --no-cache-dir --no-deps -e .
ENTRYPOINT ["patchsight"]
CMD ["--help"]
