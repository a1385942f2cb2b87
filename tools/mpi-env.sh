# tools/mpi-env.sh — sourced by the tool scripts (demo, sft-demo, benches): what
# Debian's OpenMPI needs to run here as root, oversubscribed, in a container
# (the same settings .ci/run exports; ../shared/docs/hpc-notes.md).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_hwloc_base_binding_policy=none
