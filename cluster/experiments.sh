#!/usr/bin/env bash
# Job specs for the documented experiments: submit one to a Ray cluster with `metaserve submit`.
#
#   cluster/experiments.sh --list
#   cluster/experiments.sh NAME [metaserve submit options, e.g. --address URL --no-wait --dry-run]
#   cluster/experiments.sh NAME --print      # the metaserve command it would submit, and nothing else
#
# Training runs use the Ray backend (runtime.backend=ray), so their tasks spread over the cluster's
# workers; sweeps run their trials as Tune trials on the cluster. Knobs, from the environment:
#   WORKERS          adaptation workers per run (default 2)
#   GPUS_PER_WORKER  GPUs per adaptation worker (default 0; 1 on the GPU nodes of ray_cluster.yaml)
#   DATA_ROOT        Omniglot zips as seen by the cluster (default: the config's task.root, which
#                    `metaserve submit` pins to this checkout's absolute path: right for a local cluster)
#   METASERVE        the metaserve command (default: metaserve on PATH, else .venv/bin/metaserve)
set -euo pipefail
script="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"  # absolute, for --help after the cd below
cd "$(dirname "$0")/.."

RUNS=(sinusoid-maml sinusoid-maml-ray sinusoid-reptile sinusoid-lazy-maml omniglot-maml-5w1s omniglot-protonet-5w1s)
SWEEPS=(maml-reptile-lr-k lazy-k-leap curriculum)

usage() {  # the header comment: every line after the shebang up to the first that is not a comment
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$script"
}
if [[ $# -lt 1 ]]; then
    usage >&2
    exit 2
fi
if [[ $1 == -h || $1 == --help ]]; then
    usage
    exit 0
fi
name=$1
shift
if [[ $name == --list ]]; then
    printf '%s\n' "${RUNS[@]}" "${SWEEPS[@]}"
    exit 0
fi

metaserve=${METASERVE:-$(command -v metaserve || echo .venv/bin/metaserve)}
ray_workers=(--set runtime.backend=ray --set "runtime.num_workers=${WORKERS:-2}"
             --set "runtime.gpus_per_worker=${GPUS_PER_WORKER:-0}")
data=()
[[ -n ${DATA_ROOT:-} ]] && data=(--set "task.root=$DATA_ROOT")

case " ${RUNS[*]} " in
    *" $name "*)
        command=(train "configs/$name.yaml" "${ray_workers[@]}")
        [[ $name == omniglot-* ]] && command+=("${data[@]}")
        ;;
    *)
        case " ${SWEEPS[*]} " in
            *" $name "*) command=(tune "tuning/$name.yaml") ;;
            *) echo "experiments.sh: unknown experiment '$name'; known: ${RUNS[*]} ${SWEEPS[*]}" >&2; exit 2 ;;
        esac
        ;;
esac

if [[ ${1:-} == --print ]]; then
    printf '%q ' metaserve "${command[@]}"
    echo
    exit 0
fi
exec "$metaserve" submit "$@" -- metaserve "${command[@]}"
