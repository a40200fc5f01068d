# CrossLogic control plane (`crosslogic serve`, `migrate`, `envoy-config`) and the simulated GPU
# node (`crosslogic node`): one image, the command picks the role. See docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, in their own layer: they change far less often than the code. They are
# read from pyproject.toml because setuptools package discovery needs the sources to build the
# project itself; constraints.txt pins their versions, as for make install and CI.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
        > /tmp/requirements.txt \
    && pip install -c constraints.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The project itself, installed (not editable). envoy/ stays in /app: the bootstrap template
# and usage.lua are read from ENVOY_TEMPLATE_DIR by an installed copy.
COPY . .
RUN pip install -c /app/constraints.txt /app \
    && rm -rf /app/build /app/*.egg-info

# Non-root. The directories below are the mount points of docker-compose.yml's volumes: a new
# named volume takes their owner, so the services (and Envoy, run with the same uid) can write.
RUN groupadd --system --gid 10001 crosslogic \
    && useradd --system --uid 10001 --gid crosslogic --create-home --home-dir /home/crosslogic \
        --shell /usr/sbin/nologin crosslogic \
    && mkdir -p /var/lib/crosslogic /var/lib/crosslogic/tls /var/log/crosslogic \
        /etc/crosslogic-envoy /etc/crosslogic-tls \
    && chown crosslogic:crosslogic /var/lib/crosslogic /var/lib/crosslogic/tls \
        /var/log/crosslogic /etc/crosslogic-envoy /etc/crosslogic-tls

ENV ENVOY_TEMPLATE_DIR=/app/envoy \
    DATA_DIR=/var/lib/crosslogic

USER crosslogic:crosslogic
WORKDIR /var/lib/crosslogic

# admin API, Prometheus, ext_authz, rate limit, xDS, simulated node (by convention)
EXPOSE 8080 9090 9001 9002 9003 8000

CMD ["crosslogic", "serve"]
