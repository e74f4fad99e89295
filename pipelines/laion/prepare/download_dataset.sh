#!/bin/bash
# Download the MLPerf SD data (LAION-400M moments shards, COCO-2014 eval inputs, checkpoints) and check every
# file's sha512, as mlcommons/training's scripts/datasets/laion400m-filtered-download-moments.sh does.
#
#   pipelines/laion/prepare/download_dataset.sh <base URL> <manifest> <data dir>
#
# <manifest> lists one file per line in `sha512sum` format: "<sha512>  <relative path>" (e.g.
# "…  webdataset-moments-filtered/00000.tar"), the relative path being both the URL's tail under <base URL>
# and the file's place under <data dir>. The URLs and sums are MLCommons' (their download scripts print them);
# none is repeated here, so that a changed bucket is not silently trusted. Downloads resume; a file whose sum
# does not match is removed and the script fails naming it.
set -euo pipefail

if [[ $# -ne 3 ]]; then
    sed -n '2,12p' "$0" >&2
    exit 2
fi
BASE_URL=${1%/}
MANIFEST=$(realpath "$2")
DATA_DIR=$3
: "${PARALLEL:=8}"

[[ -s $MANIFEST ]] || { echo "$MANIFEST: empty or missing manifest" >&2; exit 2; }
mkdir -p "$DATA_DIR"
cd "$DATA_DIR"

fetch() {
    local path=$2
    mkdir -p "$(dirname "$path")"
    curl --fail --location --retry 5 --continue-at - --silent --show-error -o "$path" "$BASE_URL/$path"
}
export -f fetch
export BASE_URL
# shellcheck disable=SC2016
xargs -P "$PARALLEL" -L 1 bash -c 'fetch "$0" "$1"' < "$MANIFEST"

if ! sha512sum --quiet -c "$MANIFEST"; then
    sha512sum -c "$MANIFEST" 2>/dev/null | awk -F': ' '$2 != "OK" {print $1}' | while read -r bad; do
        echo "sha512 mismatch: $DATA_DIR/$bad (removed; rerun to fetch it again)" >&2
        rm -f "$bad"
    done
    exit 1
fi
echo "all $(wc -l < "$MANIFEST") files present with matching sha512 sums in $DATA_DIR"
