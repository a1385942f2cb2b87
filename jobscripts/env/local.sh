# jobscripts/env/local.sh — one small host or container (CPU smoke runs, the
# single-host Slurm test): more ranks than cores, no binding, no ptrace.
export OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_MCA_hwloc_base_binding_policy=none
export OMPI_MCA_btl_vader_single_copy_mechanism=none
export OMPI_MCA_mpi_yield_when_idle=1
export OMP_NUM_THREADS=1
export HDF5_USE_FILE_LOCKING=FALSE
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
if [ "${DSV3_DEBUG:-0}" = 1 ]; then export OMPI_MCA_plm_base_verbose=5; fi
