# Sourced by the job scripts and submit.sh, in the repository root: the cluster profile
# slurm/clusters/$PTMREC_CLUSTER.env, its modules and conda env / virtualenv; sets $PY.
PTMREC_CLUSTER=${PTMREC_CLUSTER:-local}
_profile=slurm/clusters/$PTMREC_CLUSTER.env
if [[ ! -f $_profile ]]; then
  echo "[slurm] no cluster profile $_profile; profiles: $(cd slurm/clusters && ls *.env | sed 's/\.env$//' | tr '\n' ' ')" >&2
  exit 2
fi
source "$_profile"
if [[ -n ${PTMREC_MODULES:-} ]]; then
  if ! command -v module >/dev/null 2>&1; then
    echo "[slurm] $_profile wants modules ($PTMREC_MODULES) but this shell has no 'module' command" >&2
    exit 2
  fi
  module load $PTMREC_MODULES
fi
if [[ -n ${PTMREC_CONDA_ENV:-} ]]; then
  eval "$(conda shell.bash hook)"
  conda activate "$PTMREC_CONDA_ENV"
  PY=python
elif [[ -n ${PTMREC_VENV:-} && -x $PTMREC_VENV/bin/python ]]; then
  PY=$PTMREC_VENV/bin/python
else
  PY=python3
fi
# One thread per CPU the job was given: torch otherwise starts one per core of the node, and jobs
# sharing a node oversubscribe it (the SLURM test: two 2-thread array tasks on 2 cores took 172 s per
# ground-truth shard; with one thread each, the whole test took 64 s).
if [[ -n ${PTMREC_THREADS:-} ]]; then
  export OMP_NUM_THREADS=$PTMREC_THREADS
elif [[ -n ${SLURM_CPUS_PER_TASK:-} ]]; then
  export OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK
fi
# A stage job runs its notebook alone: the shards of a shardable stage are array tasks of their own
# (submit.sh), so ptmrec run starts no local shard processes (PTMREC_JOBS) unless the cluster file asks.
export PTMREC_JOBS=${PTMREC_JOBS:-1}
export PTMREC_CLUSTER PTMREC_PLAIN_PROGRESS=1
