/* tool.c — error exits and clock of the command-line tools (tool.h). */
#include "tool.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "comm.h"

static const char *g_prog = "dsv3";
static int g_rank, g_size = 1;

void tool_init(const char *prog, int rank, int size) { g_prog = prog, g_rank = rank, g_size = size; }

static void say(const char *fmt, va_list ap) {
    fprintf(stderr, "%s: ", g_prog);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

void tool_die(const char *fmt, ...) {
    if (g_rank == 0) {
        va_list ap;
        va_start(ap, fmt);
        say(fmt, ap);
        va_end(ap);
    }
    comm_finalize();
    exit(1);
}

void tool_die_local(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    say(fmt, ap);
    va_end(ap);
    if (g_size > 1) comm_abort(1);
    comm_finalize();
    exit(1);
}

double tool_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
