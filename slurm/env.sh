# Environment for SLURM jobs: the launcher presets in conf/hydra/launcher/ source this in each job's sbatch
# script (hydra.launcher.setup), before srun starts the Python job. Safe to source by hand as well.

# LEARN2PD_VENV: a virtualenv to activate on the compute node, so its tools are on PATH. (The job's Python is the
# interpreter that submitted it: submitit runs sys.executable, so submit from the venv the jobs should use.)
if [ -n "${LEARN2PD_VENV:-}" ]; then
    # shellcheck disable=SC1091
    . "$LEARN2PD_VENV/bin/activate"
fi

# One torch/BLAS thread per CPU SLURM gave the task (not one per core of the node).
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-${OMP_NUM_THREADS:-1}}

# Compute nodes often have no network: W&B writes offline runs unless told otherwise (`wandb sync` them later).
export WANDB_MODE=${WANDB_MODE:-offline}
