# Sourced by the benchmarks/gpu_session_*.sh scripts: the shared start of a GPU session.
# Installs the wheels in .whl/ (e.g. pycocotools for the device image's Python) to /tmp/site unless
# NO_WHEELS is set, and defines `left`: the seconds left before END_S (counted from T0).
T0=$(date +%s)
left() { echo $(( END_S - ($(date +%s) - T0) )); }
if [ -d .whl ] && [ -z "${NO_WHEELS:-}" ]; then $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 3; fi
