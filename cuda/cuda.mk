# cuda.mk — the CUDA backend's builds (included by the Makefile; README "CUDA backend").
#   make CUDA=emu   every cuda/*.cu through g++ and the emulator (cuda/emu), the twin
#                   tests (tests/cuda/test_cuda_*.c) and the emulator's self-tests, in build-emu/
#   make CUDA=1     the same sources through nvcc for sm_80 and sm_90 (-Werror all-warnings,
#                   ptxas spills and local memory as errors), linked with cudart, cuBLAS(Lt)
#                   and NCCL, in build-cuda/ (compiles and links everywhere; runs on a GPU)
# The twin tests link the cuda objects built with -DDSV3_CU_TWIN (cu_* only) beside the
# CPU reference in build/libdsv3.a, so one binary holds both twins.
CUDA_HOME ?= /usr/local/cuda
NVCC := $(CUDA_HOME)/bin/nvcc
MPI_INC := $(shell mpicc --showme:compile 2>/dev/null)
CU_SRC := $(wildcard cuda/*.cu)
CU_HDR := $(wildcard cuda/*.h cuda/*.cuh) src/ops.h src/ops_attn.h src/ops_moe.h
TWIN_SRC := $(wildcard tests/cuda/test_cuda_*.c)
EMU_RT := cudaemu cublas_emu cublaslt_emu nccl_emu

# -- emulation: g++ (C++17), the real NVIDIA headers, cuda/emu instead of the libraries
EMU_DIR := build-emu$(if $(SANFLAGS),-san)
EMU_CXXFLAGS := -std=c++17 -O2 -g -Wall -Wextra -Werror -Wno-unknown-pragmas -fopenmp -DDSV3_CUDA_EMU \
                -DOMPI_SKIP_MPICXX -I$(CUDA_HOME)/include -Icuda -Isrc $(BLAS_CFLAGS) $(MPI_INC) $(SANFLAGS)
TWIN_CFLAGS := -std=c11 -O2 -g -Wall -Wextra -Werror -D_GNU_SOURCE -fopenmp -I$(CUDA_HOME)/include -Icuda -Isrc \
               -Itests/cuda $(BLAS_CFLAGS) $(SANFLAGS)
EMU_RT_OBJ := $(EMU_RT:%=$(EMU_DIR)/emu/%.o)
GPU_DIR := build-cuda
# comm.h over NCCL (cuda/comm_nccl.c): the CUDA binaries link these before the library
COMM_MPI_RENAME := abort finalize dup split split_node free sum_floats reduce_scatter allgather allgather_u16 alltoall_int \
                   alltoallv_rows alltoallv_rows_start wait test node_shared_available
COMM_CFLAGS := -std=c11 -O2 -g -Wall -Wextra -Werror -D_GNU_SOURCE -I$(CUDA_HOME)/include -Icuda -Isrc $(SANFLAGS)
EMU_COMM_OBJ := $(EMU_DIR)/src/comm_mpi.o $(EMU_DIR)/cuda/comm_nccl.o
GPU_COMM_OBJ := $(GPU_DIR)/src/comm_mpi.o $(GPU_DIR)/cuda/comm_nccl.o
EMU_TWIN_OBJ := $(CU_SRC:cuda/%.cu=$(EMU_DIR)/cuda/%.twin.o)
EMU_TWINS := $(TWIN_SRC:tests/cuda/%.c=$(EMU_DIR)/tests/%)
EMU_SELF := $(EMU_DIR)/tests/selftest $(EMU_DIR)/tests/warp_semantics

$(EMU_DIR)/emu/%.o: cuda/emu/%.cpp cuda/emu/cudaemu.h
	@mkdir -p $(dir $@)
	mpicxx $(EMU_CXXFLAGS) -c $< -o $@
$(EMU_DIR)/cuda/%.twin.o: cuda/%.cu $(CU_HDR) cuda/emu/cudaemu.h
	@mkdir -p $(dir $@)
	g++ $(EMU_CXXFLAGS) -DDSV3_CU_TWIN -x c++ -c $< -o $@
$(EMU_DIR)/cuda/%.o: cuda/%.cu $(CU_HDR) cuda/emu/cudaemu.h
	@mkdir -p $(dir $@)
	g++ $(EMU_CXXFLAGS) -x c++ -c $< -o $@
$(EMU_DIR)/tests/%.o: tests/cuda/%.c tests/cuda/twin.h $(CU_HDR)
	@mkdir -p $(dir $@)
	mpicc $(TWIN_CFLAGS) -c $< -o $@
$(EMU_DIR)/tests/test_cuda_%: $(EMU_DIR)/tests/test_cuda_%.o $(EMU_TWIN_OBJ) $(EMU_RT_OBJ) $(BUILD)/libdsv3.a
	mpicxx -fopenmp -rdynamic $(SANFLAGS) $^ -o $@ $(LDLIBS)
$(EMU_DIR)/tests/%: tests/cuda/%.cu $(EMU_DIR)/emu/cudaemu.o cuda/dsv3_cuda.cuh cuda/emu/cudaemu.h
	@mkdir -p $(dir $@)
	g++ $(EMU_CXXFLAGS) -x c++ -c $< -o $@.o && g++ -fopenmp -rdynamic $(SANFLAGS) $@.o $(EMU_DIR)/emu/cudaemu.o -o $@
# the planted bug: block_sum without its first __syncthreads (tests/it_cuda_emu.sh: must fail)
$(EMU_DIR)/cuda/ops.racy.o: cuda/ops.cu $(CU_HDR) cuda/emu/cudaemu.h
	@mkdir -p $(dir $@)
	g++ $(EMU_CXXFLAGS) -DDSV3_CU_TWIN -DDSV3_PLANT_MISSING_BARRIER -x c++ -c $< -o $@
$(EMU_DIR)/tests/racy_cuda_ops: $(EMU_DIR)/tests/test_cuda_ops.o $(EMU_DIR)/cuda/ops.racy.o \
                                $(filter-out $(EMU_DIR)/cuda/ops.twin.o,$(EMU_TWIN_OBJ)) $(EMU_RT_OBJ) $(BUILD)/libdsv3.a
	mpicxx -fopenmp -rdynamic $(SANFLAGS) $^ -o $@ $(LDLIBS)

# -- the backend in place of the CPU ops: src/ without src/ops_cpu*.c (libdsv3-cuda.a) + the
# full cuda objects (ops_X and cu_X). test_cuda_mem (the memory section, which cannot sit
# beside the CPU's in one binary) and the whole model: bin-emu/dsv3, bin-emu/dsv3-refcheck.
CU_LIB_OBJ := $(filter-out $(BUILD)/src/ops_cpu%.o,$(LIB_OBJ))
EMU_FULL_OBJ := $(CU_SRC:cuda/%.cu=$(EMU_DIR)/cuda/%.o)
BIN_EMU := bin-emu$(if $(SANFLAGS),-san)
$(EMU_DIR)/libdsv3-cuda.a: $(CU_LIB_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^
$(EMU_DIR)/tests/test_cuda_mem: $(EMU_DIR)/tests/test_cuda_mem.o $(EMU_FULL_OBJ) $(EMU_RT_OBJ) $(EMU_DIR)/libdsv3-cuda.a
	mpicxx -fopenmp -rdynamic $(SANFLAGS) $^ -o $@ $(LDLIBS)
$(BIN_EMU)/dsv3: $(BUILD)/src/main.o $(EMU_FULL_OBJ) $(EMU_COMM_OBJ) $(EMU_RT_OBJ) $(EMU_DIR)/libdsv3-cuda.a
	@mkdir -p $(dir $@)
	mpicxx -fopenmp -rdynamic $(SANFLAGS) $^ -o $@ $(LDLIBS)
$(BIN_EMU)/%: $(BUILD)/tools/%.o $(EMU_FULL_OBJ) $(EMU_COMM_OBJ) $(EMU_RT_OBJ) $(EMU_DIR)/libdsv3-cuda.a
	@mkdir -p $(dir $@)
	mpicxx -fopenmp -rdynamic $(SANFLAGS) $^ -o $@ $(LDLIBS)

.PHONY: cuda-emu cuda-gpu cuda-emu-model cuda-gpu-model
.SECONDARY: # keep the cuda objects make sees as intermediate (twin, ptxas reports)
# the backend objects themselves (the ops_* bodies) are compiled too (test_cuda_mem links them)
cuda-emu: $(BUILD)/libdsv3.a $(EMU_TWINS) $(EMU_SELF) $(EMU_DIR)/tests/racy_cuda_ops $(EMU_FULL_OBJ)
# the whole model; links once every ops*.h function has its cuda/ implementation
cuda-emu-model: $(BIN_EMU)/dsv3 $(BIN_EMU)/dsv3-refcheck $(BIN_EMU)/dsv3-generate

# -- nvcc: the same sources for sm_80 and sm_90; compile and link only, here
NVFLAGS := -std=c++17 -O3 -Werror all-warnings -Xcompiler -Wall,-Wextra -Xptxas -warn-spills,-warn-lmem-usage \
           --resource-usage -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
           -DOMPI_SKIP_MPICXX -Icuda -Isrc $(MPI_INC)
GPU_LIBS := -L$(CUDA_HOME)/lib -Wl,-rpath,$(CUDA_HOME)/lib -lcudart -lcublasLt -lcublas -lnccl
GPU_TWIN_OBJ := $(CU_SRC:cuda/%.cu=$(GPU_DIR)/cuda/%.twin.o)
GPU_TWINS := $(TWIN_SRC:tests/cuda/%.c=$(GPU_DIR)/tests/%)

# the ptxas report (registers, spills, smem per kernel and arch) is kept beside the object
$(GPU_DIR)/cuda/%.twin.o: cuda/%.cu $(CU_HDR)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -DDSV3_CU_TWIN -c $< -o $@ 2> $@.ptxas || { cat $@.ptxas; exit 1; }
$(GPU_DIR)/cuda/%.o: cuda/%.cu $(CU_HDR)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -c $< -o $@ 2> $@.ptxas || { cat $@.ptxas; exit 1; }
$(GPU_DIR)/tests/%.o: tests/cuda/%.c tests/cuda/twin.h $(CU_HDR)
	@mkdir -p $(dir $@)
	mpicc $(TWIN_CFLAGS) -c $< -o $@
$(GPU_DIR)/tests/test_cuda_%: $(GPU_DIR)/tests/test_cuda_%.o $(GPU_TWIN_OBJ) $(BUILD)/libdsv3.a
	mpicxx -fopenmp $^ -o $@ $(LDLIBS) $(GPU_LIBS)
$(GPU_DIR)/tests/%: tests/cuda/%.cu cuda/dsv3_cuda.cuh
	@mkdir -p $(dir $@)
	$(NVCC) -std=c++17 -O2 -Werror all-warnings -arch=sm_90 -Icuda $< -o $@
GPU_FULL_OBJ := $(CU_SRC:cuda/%.cu=$(GPU_DIR)/cuda/%.o)
$(GPU_DIR)/libdsv3-cuda.a: $(CU_LIB_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^
$(GPU_DIR)/tests/test_cuda_mem: $(GPU_DIR)/tests/test_cuda_mem.o $(GPU_FULL_OBJ) $(GPU_DIR)/libdsv3-cuda.a
	mpicxx -fopenmp $^ -o $@ $(LDLIBS) $(GPU_LIBS)
bin-cuda/dsv3: $(BUILD)/src/main.o $(GPU_FULL_OBJ) $(GPU_COMM_OBJ) $(GPU_DIR)/libdsv3-cuda.a
	@mkdir -p $(dir $@)
	mpicxx -fopenmp $^ -o $@ $(LDLIBS) $(GPU_LIBS)
bin-cuda/%: $(BUILD)/tools/%.o $(GPU_FULL_OBJ) $(GPU_COMM_OBJ) $(GPU_DIR)/libdsv3-cuda.a
	@mkdir -p $(dir $@)
	mpicxx -fopenmp $^ -o $@ $(LDLIBS) $(GPU_LIBS)
cuda-gpu: $(BUILD)/libdsv3.a $(GPU_TWINS) $(GPU_DIR)/tests/warp_semantics $(GPU_FULL_OBJ)
cuda-gpu-model: bin-cuda/dsv3 bin-cuda/dsv3-refcheck bin-cuda/dsv3-generate

# -- comm.h over NCCL (cuda/comm_nccl.c) for both CUDA builds. src/comm.c is compiled once
#    more with its device-capable entry points renamed comm_X -> comm_mpi_X (cuda/comm_mpi.h);
#    comm_nccl.c defines comm_X and calls them for host data. A CUDA binary links
#    $(EMU_COMM_OBJ) or $(GPU_COMM_OBJ) before build/libdsv3.a (whose comm.o is then not used).
$(EMU_DIR)/src/comm_mpi.o $(GPU_DIR)/src/comm_mpi.o: src/comm.c src/comm.h
	@mkdir -p $(dir $@)
	mpicc $(COMM_CFLAGS) $(foreach f,$(COMM_MPI_RENAME),-Dcomm_$(f)=comm_mpi_$(f)) -c $< -o $@
$(EMU_DIR)/cuda/comm_nccl.o $(GPU_DIR)/cuda/comm_nccl.o: cuda/comm_nccl.c cuda/comm_mpi.h cuda/cu_ops.h src/comm.h \
                                                       src/error.h
	@mkdir -p $(dir $@)
	mpicc $(COMM_CFLAGS) -c $< -o $@
# NCCL vs MPI on the same data, under mpirun (tests/it_cuda_comm.sh); not a twin test (test_cuda_*)
$(EMU_DIR)/tests/test_comm_nccl: $(EMU_DIR)/tests/test_comm_nccl.o $(EMU_COMM_OBJ) $(EMU_TWIN_OBJ) $(EMU_RT_OBJ) \
                                 $(BUILD)/libdsv3.a
	mpicxx -fopenmp -rdynamic $(SANFLAGS) $^ -o $@ $(LDLIBS)
$(GPU_DIR)/tests/test_comm_nccl: $(GPU_DIR)/tests/test_comm_nccl.o $(GPU_COMM_OBJ) $(GPU_TWIN_OBJ) $(BUILD)/libdsv3.a
	mpicxx -fopenmp $^ -o $@ $(LDLIBS) $(GPU_LIBS)
cuda-emu: $(EMU_DIR)/tests/test_comm_nccl
cuda-gpu: $(GPU_DIR)/tests/test_comm_nccl
