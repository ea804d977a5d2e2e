# A fedsync device. Build from the repository's root:  docker build -f deploy/docker/device.Dockerfile -t fedsync-device .
# Run with the site's device.py and data mounted read-only (they never enter the image):
#   docker run -d -p 127.0.0.1:8000:8000 -e FEDSYNC_TOKEN=... -v /srv/fedsync:/srv/fedsync:ro fedsync-device
# A device behind NAT dials out instead (no port to publish):
#   docker run -d -e FEDSYNC_TOKEN=... -v /srv/fedsync:/srv/fedsync:ro fedsync-device \
#     fedsync serve device.py:data --connect https://coordinator.example.org:9443 --name site-a --cafile ca.pem
FROM python:3.12-slim
COPY . /opt/fedsync-src
RUN pip install --no-cache-dir /opt/fedsync-src && rm -rf /opt/fedsync-src && useradd --system --no-create-home fedsync
USER fedsync
WORKDIR /srv/fedsync
ENV PYTHONUNBUFFERED=1
EXPOSE 8000
CMD ["fedsync", "serve", "device.py:data", "--host", "0.0.0.0", "--port", "8000"]
