/* main.c — the dsv3 command line.
 *
 *   dsv3 [--check | --dry-run | --print-deck | --help | --version] DECK [key.path=value ...]
 *
 * Every rank parses the same argv and the same broadcast deck, so every rank
 * reaches the same verdict: errors are printed once (rank 0) and every rank
 * leaves through MPI_Finalize with the same exit code — no abort, no hang.
 * Exit codes: 0 success, 1 bad deck or failed run, 2 bad command line.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <string.h>

#include "ckpt.h"
#include "deck.h"
#include "perf.h"
#include "plan.h"
#include "train.h"

#ifndef DSV3_VERSION
#define DSV3_VERSION "0.1.0"
#endif
#ifndef DSV3_GIT_REV
#define DSV3_GIT_REV "unknown"
#endif

enum { M_TRAIN, M_CHECK, M_DRY, M_PRINT, M_HELP, M_VERSION };

static const char USAGE[] =
    "usage: dsv3 [--check | --dry-run [--gpu-mem GB] [--intra-gbs GB/s] [--inter-gbs GB/s] | --print-deck |\n"
    "             --help | --version] DECK [key.path=value ...]\n";

static const char HELP[] =
    "\n"
    "Trains a DeepSeek-V3 model (pretraining, fine-tuning, LoRA SFT) described by a\n"
    "libconfig input deck, on one or many MPI ranks:  mpirun -np N dsv3 DECK\n"
    "\n"
    "  (no option)    train\n"
    "  --check        validate the deck (keys, types, ranges, layout for this rank count)\n"
    "                 and print \"deck OK\"\n"
    "  --dry-run      build the parallel plan and print it (experts and ZeRO shards per\n"
    "                 rank, memory estimate) without allocating the model, then the GPU\n"
    "                 plan (README \"The 671B plan\"): memory by category in the GPU layout,\n"
    "                 bytes per link class, FLOPs and the predicted step time on A100/H100/H200\n"
    "    --gpu-mem GB     with --dry-run: does the deck fit in GB (1e9 bytes) per GPU, the\n"
    "                     largest seq_len and micro-batch that do, the faster placement\n"
    "    --intra-gbs X    with --dry-run: effective intra-node (NVLink) GB/s per GPU per\n"
    "                     direction (default: 240 A100, 360 H100/H200, NCCL-measured)\n"
    "    --inter-gbs X    with --dry-run: effective inter-node GB/s per GPU per direction\n"
    "                     (default 47: NDR InfiniBand 400 Gb/s, one NIC per GPU; 100 GbE\n"
    "                     sockets shared by 8 GPUs are about 1.4)\n"
    "  --print-deck   print the effective deck, every default filled in (libconfig that\n"
    "                 dsv3 reads back to the same configuration)\n"
    "  --help         this text\n"
    "  --version      version and git revision\n"
    "\n"
    "key.path=value overrides a deck key after reading, with the same type checks:\n"
    "  dsv3 input/tiny.cfg run.steps=50 optimizer.lr=1e-3 run.output_dir=runs/x\n"
    "Values use libconfig syntax: 3 is an int, 3.0 a float, true/false a bool,\n"
    "\"text\" or a bare word a string.\n";

static int rank0;

static void finish(int code)
{
    fflush(stdout);
    fflush(stderr);
    /* After a checkpoint file HDF5 could not close (a full disk), HDF5's
     * shutdown inside MPI_Finalize would crash: every rank leaves at once
     * instead, with the error already reported (ckpt.h). */
    int broken = ckpt_io_broken(), any = 0;
    MPI_Allreduce(&broken, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (any) _exit(code ? code : 1);
    MPI_Finalize();
    exit(code);
}

static void usage_error(const char *fmt, const char *arg)
{
    if (rank0) {
        fputs("dsv3: ", stderr);
        fprintf(stderr, fmt, arg);
        fputc('\n', stderr);
        fputs(USAGE, stderr);
    }
    finish(2);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    rank0 = rank == 0;

    int mode = M_TRAIN, n_modes = 0, n_perf = 0;
    perf_opts po = perf_opts_default();
    const char *path = NULL;
    char **over = calloc((size_t)argc + 1, sizeof *over);
    int n_over = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (a[0] == '-' && a[1] == '-' && path == NULL) {
            if (!strcmp(a, "--check")) mode = M_CHECK;
            else if (!strcmp(a, "--dry-run")) mode = M_DRY;
            else if (!strcmp(a, "--print-deck")) mode = M_PRINT;
            else if (!strcmp(a, "--help") || !strcmp(a, "-h")) mode = M_HELP;
            else if (!strcmp(a, "--version")) mode = M_VERSION;
            else if (!strcmp(a, "--gpu-mem") || !strcmp(a, "--intra-gbs") || !strcmp(a, "--inter-gbs")) {
                char *end = NULL;
                double v = i + 1 < argc ? strtod(argv[i + 1], &end) : 0.0;
                if (i + 1 >= argc || end == argv[i + 1] || *end || !(v > 0) || v > 1e6)
                    usage_error("%s needs a positive number", a);
                if (!strcmp(a, "--gpu-mem")) po.gpu_mem_gb = v;
                else if (!strcmp(a, "--intra-gbs")) po.intra_gbs = v;
                else po.inter_gbs = v;
                i++;
                n_perf++;
                continue;
            }
            else usage_error("unknown option '%s'", a);
            n_modes++;
        } else if (a[0] == '-' && path == NULL && strcmp(a, "-")) {
            if (!strcmp(a, "-h")) { mode = M_HELP; n_modes++; }
            else usage_error("unknown option '%s'", a);
        } else if (!path) {
            path = a;
        } else if (strchr(a, '=') && a[0] != '=') {
            over[n_over++] = argv[i];
        } else {
            usage_error("'%s' is not a key.path=value override (options go before the deck)", a);
        }
    }
    if (n_modes > 1) usage_error("%s", "give at most one of --check, --dry-run, --print-deck, --help, --version");
    if (mode == M_HELP) {
        if (rank0) printf("%s%s", USAGE, HELP);
        finish(0);
    }
    if (mode == M_VERSION) {
        if (rank0) printf("dsv3 %s (git %s)\n", DSV3_VERSION, DSV3_GIT_REV);
        finish(0);
    }
    if (n_perf && mode != M_DRY) usage_error("%s", "--gpu-mem, --intra-gbs and --inter-gbs go with --dry-run");
    if (!path) usage_error("%s", "no deck given");

    deck d;
    char err[1024];
    MPI_Comm world = MPI_COMM_WORLD;
    if (deck_load(&d, path, n_over, over, size, &world, err, sizeof err)) {
        /* every rank parsed the same text: all know, rank 0 says it */
        if (rank0) fprintf(stderr, "dsv3: %s\n", err);
        finish(1);
    }
    free(over);

    int rc = 0;
    /* planned-only choices: a real run stops here, before any work; --check
     * and --dry-run take them (deck_runnable: a choice marked as layout would
     * stop --check too; none is since uneven expert ownership runs) */
    if ((mode == M_TRAIN || mode == M_CHECK) && deck_runnable(&d, mode == M_CHECK, err, sizeof err)) {
        if (rank0) fprintf(stderr, "dsv3: %s\n", err);
        deck_free(&d);
        finish(1);
    }
    if (mode == M_CHECK) {
        if (rank0) printf("deck OK: %s (%d rank%s)\n", path, size, size == 1 ? "" : "s");
        if (rank0 && d.planned[0]) printf("deck: planned only, a real run refuses it: %s\n", d.planned);
    } else if (mode == M_PRINT) {
        if (rank0) {
            char *t = deck_print(&d);
            fputs(t ? t : "", stdout);
            free(t);
        }
    } else {
        plan p;
        memset(&p, 0, sizeof p);
        if (plan_build(&p, &d, MPI_COMM_WORLD, err, sizeof err)) {
            if (rank0) fprintf(stderr, "dsv3: %s\n", err);
            deck_free(&d);
            finish(1);
        }
        if (mode == M_DRY) {
            plan_print(&p, &d, stdout);
            if (rank0) plan_print_perf(&p, &d, &po, stdout);
        } else {
            rc = train_run(&d, &p) ? 1 : 0;
        }
        plan_free(&p);
    }
    deck_free(&d);
    finish(rc);
    return rc;
}
