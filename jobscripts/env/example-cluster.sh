# jobscripts/env/example-cluster.sh — site settings for an 8-GPU-per-node
# InfiniBand cluster; copy to env/<yoursite>.sh, edit, submit with
# DSV3_CLUSTER=<yoursite>. Sourced by jobscripts/lib.sh inside the job.

# --- software (modules, if the site uses them) ---
# module load cuda/12.4 openmpi/4.1 hdf5/1.14-mpi

# --- NCCL ---
export NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-ib0}   # bootstrap/socket interface (not docker0/lo)
export NCCL_IB_HCA=${NCCL_IB_HCA:-mlx5}                # IB adapters to use (prefix match)
export NCCL_IB_DISABLE=${NCCL_IB_DISABLE:-0}           # 1 = no InfiniBand (falls back to sockets)
export NCCL_P2P_DISABLE=${NCCL_P2P_DISABLE:-0}         # 1 = no GPU peer-to-peer (NVLink/PCIe)
export NCCL_P2P_LEVEL=${NCCL_P2P_LEVEL:-NVL}           # use P2P over NVLink only
export NCCL_NET_GDR_LEVEL=${NCCL_NET_GDR_LEVEL:-PHB}   # GPUDirect RDMA when NIC and GPU share a host bridge
export NCCL_IB_TIMEOUT=${NCCL_IB_TIMEOUT:-22}          # IB verbs timeout exponent (4.096 us * 2^22)
export NCCL_IB_RETRY_CNT=${NCCL_IB_RETRY_CNT:-7}
export NCCL_ASYNC_ERROR_HANDLING=${NCCL_ASYNC_ERROR_HANDLING:-1}

# --- UCX / OpenMPI (MPI all-to-all, checkpoint I/O) ---
export UCX_NET_DEVICES=${UCX_NET_DEVICES:-mlx5_0:1}
export UCX_TLS=${UCX_TLS:-rc,sm,self}                  # add cuda_copy,cuda_ipc for CUDA-aware MPI
export UCX_RC_TIMEOUT=${UCX_RC_TIMEOUT:-10s}
export OMPI_MCA_pml=${OMPI_MCA_pml:-ucx}
export OMPI_MCA_btl=${OMPI_MCA_btl:-^openib,smcuda}
export OMPI_MCA_coll_hcoll_enable=${OMPI_MCA_coll_hcoll_enable:-0}

# --- parallel HDF5 on a shared file system ---
export HDF5_USE_FILE_LOCKING=${HDF5_USE_FILE_LOCKING:-FALSE}
# export ROMIO_HINTS=$DSV3_HOME/jobscripts/env/romio-hints   # e.g. striping_factor for Lustre

# --- debug output: opt-in only (DSV3_DEBUG=1) ---
if [ "${DSV3_DEBUG:-0}" = 1 ]; then
    export NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,NET,ENV
    export UCX_LOG_LEVEL=info
    export OMPI_MCA_pml_ucx_verbose=10
fi
