/* tool.c — error exits and clock of the command-line tools (tool.h). */
#include "tool.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "ckpt.h"
#include "comm.h"

static const char *g_prog = "dsv3";
static int g_rank, g_size = 1;

void tool_init(const char *prog, int rank, int size) { g_prog = prog, g_rank = rank, g_size = size; }

static void say(const char *fmt, va_list ap) {
    fprintf(stderr, "%s: ", g_prog);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

/* Ends the process with code. After a file HDF5 could not close (a full disk,
 * a file-size limit: ckpt.h ckpt_io_broken), HDF5's own shutdown inside
 * MPI_Finalize would crash on it: then every rank leaves without it, the
 * error already reported, as dsv3's main does. Collective unless alone. */
__attribute__((noreturn)) static void leave(int code, int alone) {
    fflush(stdout);
    fflush(stderr);
    int broken = ckpt_io_broken();
    if (!alone && comm_running()) broken = comm_max_int(broken, COMM_WORLD);
    if (broken) _exit(code);
    comm_finalize();
    exit(code);
}

void tool_die(const char *fmt, ...) {
    if (g_rank == 0) {
        va_list ap;
        va_start(ap, fmt);
        say(fmt, ap);
        va_end(ap);
    }
    leave(1, 0);
}

void tool_die_local(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    say(fmt, ap);
    va_end(ap);
    if (g_size > 1) comm_abort(1);
    leave(1, 1);
}

double tool_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
