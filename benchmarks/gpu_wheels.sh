# Sourced by the GPU scripts: installs the wheels benchmarks/gpu_prepare.sh put in .whl/ (the versions loraclf is
# tested with) over whatever the machine's image holds, into /tmp/site, first on PYTHONPATH. WHEELS=0 skips it.
if [ "${WHEELS:-1}" = 1 ] && ls .whl/*.whl >/dev/null 2>&1; then
  "${PY:-python3}" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
