# A fedsync coordinator with its dial-out listener (deploy/coordinator.py). Build from the repository's root:
#   docker build -f deploy/docker/coordinator.Dockerfile -t fedsync-coordinator .
# Run with model.py and devices.json (the allow-list) mounted, and a folder for checkpoints:
#   docker run -d -p 127.0.0.1:9000:9000 -v /srv/fedsync:/srv/fedsync fedsync-coordinator
FROM python:3.12-slim
COPY . /opt/fedsync-src
RUN pip install --no-cache-dir /opt/fedsync-src && cp /opt/fedsync-src/deploy/coordinator.py /opt/coordinator.py \
    && rm -rf /opt/fedsync-src && useradd --system --no-create-home fedsync
USER fedsync
WORKDIR /srv/fedsync
ENV PYTHONUNBUFFERED=1
EXPOSE 9000
CMD ["python", "/opt/coordinator.py", "model.py:data", "--devices", "devices.json", "--host", "0.0.0.0", "--port", "9000", "--checkpoint", "/srv/fedsync/checkpoints"]
