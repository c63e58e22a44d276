#!/bin/sh
# One-shot job of the compose `models` service: make sure the default models are in the models
# volume. `build-defaults` skips every model already built and valid and resumes an interrupted
# build, so `docker compose up` trains only the first time (minutes on a CPU) and is quick after.
# Arguments are passed on to build-defaults (e.g. `--set base=/data/base`, `--tasks qa`), which is
# how CI runs the image's real build path on tiny data.
set -eu
models_dir="${DISTILSERVE_MODELS_DIR:-/models}"
echo "default models in $models_dir (recipe ${DISTILSERVE_RECIPE:-quick}); already built ones are skipped"
exec python -m training build-defaults --recipe "${DISTILSERVE_RECIPE:-quick}" --models "$models_dir" "$@"
