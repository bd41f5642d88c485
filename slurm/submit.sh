#!/usr/bin/env bash
# Submit the pipeline for one parameter set to SLURM as a chain of jobs, one per stage:
#
#   slurm/submit.sh params/anvil.yaml --cluster anvil              # every stage not yet up to date
#   slurm/submit.sh params/smoke.yaml --cluster local --until 03_autoencoder --shards 2
#   slurm/submit.sh params/anvil.yaml --from 05_baselines           # earlier stages must be done
#   slurm/submit.sh params/anvil.yaml --dry-run                     # print the sbatch commands only
#   slurm/submit.sh params/anvil.yaml --one-job                     # everything in one job (run_pipeline.sbatch)
#
# Each stage's notebook is one job (slurm/run_stage.sbatch) that starts only when the jobs of the
# stages it reads (pipeline.STAGES[...].depends) succeeded (--dependency=afterok). A shardable stage (`ptmrec shard --list`) is preceded by a job
# array of --shards tasks (default: the profile's PTMREC_SHARDS); task i computes shard i of the
# models into the stage's work folder, and the notebook job after the array only merges. A job that
# fails cancels every job after it (--kill-on-invalid-dep=yes). Stages already up to date are not
# submitted. --force redoes the selected stages, without arrays (the notebook computes everything).
#
# Cluster settings (partition, account, GPUs, CPUs, time, modules, conda env) come from
# slurm/clusters/<name>.env. Logs: $PTMREC_RUNS/<set>/logs/<job name>-<job id>.out and, for array
# tasks, <job name>-<array job id>_<task>.out. Prints one line "<stage>[-shards] <job id>" per job.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; }
params="" cluster=${PTMREC_CLUSTER:-local} shards="" dry=0 force=0 one_job=0 after=""
plan_args=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --cluster) cluster=$2; shift 2 ;;
    --shards) shards=$2; shift 2 ;;
    --from|--until) plan_args+=("$1" "$2"); shift 2 ;;
    --only) plan_args+=(--only); shift; while [[ $# -gt 0 && $1 != --* ]]; do plan_args+=("$1"); shift; done ;;
    --after) after=$2; shift 2 ;;
    --force) force=1; shift ;;
    --one-job) one_job=1; shift ;;
    --dry-run) dry=1; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "submit.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) if [[ -n $params ]]; then echo "submit.sh: two parameter sets: $params and $1" >&2; exit 2; fi
       params=$1; shift ;;
  esac
done
if [[ -z $params ]]; then usage >&2; exit 2; fi
if [[ ! -f $params ]]; then echo "submit.sh: no parameter set $params" >&2; exit 2; fi

PTMREC_CLUSTER=$cluster
if [[ $dry == 1 ]]; then  # preview anywhere: the profile's settings, but this machine's python
  if [[ ! -f slurm/clusters/$cluster.env ]]; then echo "submit.sh: no cluster profile slurm/clusters/$cluster.env" >&2; exit 2; fi
  source "slurm/clusters/$cluster.env"
  PY=python3
  if [[ -n ${VIRTUAL_ENV:-} ]]; then PY=python; elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; fi
else
  source slurm/env.sh
fi
if [[ -n ${PTMREC_REQUIRE_ACCOUNT:-} && -z ${PTMREC_ACCOUNT:-} ]]; then
  echo "submit.sh: cluster '$cluster' needs an account: export PTMREC_ACCOUNT=<allocation> or set it in" \
       "slurm/clusters/$cluster.env" >&2
  exit 2
fi
shards=${shards:-${PTMREC_SHARDS:-1}}
if [[ $force == 1 ]]; then shards=1; fi

# Validates the parameter set (a bad key fails here, before anything is submitted) and lists the stages.
plan=$("$PY" -m ptmrec.cli plan "$params" "${plan_args[@]}")
run_dir=$(head -n 1 <<< "$plan" | cut -d' ' -f2-)
set_name=$(basename "$run_dir")
logs=$run_dir/logs
mkdir -p "$logs"

opts=(--chdir="$REPO" --export="ALL,PTMREC_CLUSTER=$cluster,PTMREC_REPO=$REPO" --kill-on-invalid-dep=yes --parsable)
[[ -n ${PTMREC_PARTITION:-} ]] && opts+=(--partition="$PTMREC_PARTITION")
[[ -n ${PTMREC_ACCOUNT:-} ]] && opts+=(--account="$PTMREC_ACCOUNT")
[[ ${PTMREC_GPUS:-0} != 0 ]] && opts+=(--gres="gpu:$PTMREC_GPUS")
[[ -n ${PTMREC_CPUS:-} ]] && opts+=(--cpus-per-task="$PTMREC_CPUS")
[[ -n ${PTMREC_MEM:-} ]] && opts+=(--mem="$PTMREC_MEM")
[[ -n ${PTMREC_TIME:-} ]] && opts+=(--time="$PTMREC_TIME")
# shellcheck disable=SC2206
[[ -n ${PTMREC_SBATCH_ARGS:-} ]] && opts+=($PTMREC_SBATCH_ARGS)

submit() {  # submit NAME SBATCH-ARGS... -> job id (with --dry-run: prints the command, id "<NAME>")
  local name=$1
  shift
  if [[ $dry == 1 ]]; then
    echo "sbatch $*" >&2
    echo "<$name>"
  else
    sbatch "$@" | cut -d';' -f1
  fi
}

run_opts=()
[[ $force == 1 ]] && run_opts+=(--force)
if [[ $one_job == 1 ]]; then
  if [[ " ${plan_args[*]} " == *" --until "* ]]; then echo "submit.sh: --one-job runs to the end (no --until)" >&2; exit 2; fi
  dep=()
  [[ -n $after ]] && dep=(--dependency="afterok:$after")
  id=$(submit pipeline "${opts[@]}" "${dep[@]}" --job-name="ptmrec-$set_name" --output="$logs/%x-%j.out" \
       slurm/run_pipeline.sbatch "$params" "${plan_args[@]}" "${run_opts[@]}")
  echo "pipeline $id"
  exit 0
fi

declare -A job=()  # stage -> the job id of its notebook
while read -r stage shardable fresh deps; do
  [[ -z $stage ]] && continue
  if [[ $fresh == 1 && $force == 0 ]]; then
    echo "# $stage is up to date: not submitted" >&2
    continue
  fi
  wait_for=""  # the jobs of the stages it reads (those submitted here), else --after
  for d in ${deps//,/ }; do
    if [[ -n ${job[$d]:-} ]]; then wait_for+=":${job[$d]}"; fi
  done
  if [[ -z $wait_for && -n $after ]]; then wait_for=":$after"; fi
  dep=()
  [[ -n $wait_for ]] && dep=(--dependency="afterok$wait_for")
  if [[ $shardable == 1 && $shards -gt 1 ]]; then
    array="0-$((shards - 1))${PTMREC_ARRAY_MAX:+%$PTMREC_ARRAY_MAX}"
    id=$(submit "$stage-shards" "${opts[@]}" "${dep[@]}" --array="$array" --job-name="ptmrec-$set_name-$stage-shard" \
         --output="$logs/%x-%A_%a.out" slurm/run_stage.sbatch "$params" "$stage" --shard "$shards")
    echo "$stage-shards $id"
    dep=(--dependency="afterok:$id")
  fi
  id=$(submit "$stage" "${opts[@]}" "${dep[@]}" --job-name="ptmrec-$set_name-$stage" --output="$logs/%x-%j.out" \
       slurm/run_stage.sbatch "$params" "$stage" "${run_opts[@]}")
  echo "$stage $id"
  job[$stage]=$id
done <<< "$(tail -n +2 <<< "$plan")"
