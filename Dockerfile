# kaimon's shared HTTP server in a container. See "Run the HTTP server in Docker" in README.md.
#
#   docker build -t kaimon .
#
# The kernels it serves are the host's: run it with the host's Jupyter runtime dir mounted at
# the same path (session and connection files name host paths), the host's network (kernels
# listen on the host's loopback) and the host's pids (kaimon tells a live kernel by its pid).
FROM python:3.12-slim

# No root inside: run with --user "$(id -u):$(id -g)" so the 0600 session files are readable;
# HOME is somewhere that user may write (IPython's profile of the kernels it starts).
ENV HOME=/tmp \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY pyproject.toml README.md /src/
COPY kaimon_kernel /src/kaimon_kernel
COPY kernelspec /src/kernelspec
RUN pip install /src && rm -rf /src

EXPOSE 2828
# Beyond loopback the server insists on its bearer token (`kaimon token`, or KAIMON_TOKEN):
# it refuses --no-auth on 0.0.0.0. With --network host, pass --host 127.0.0.1 to stay local.
ENTRYPOINT ["kaimon", "serve", "--http", "--port", "2828"]
CMD ["--host", "0.0.0.0"]
