/* error.c — error_one (die on one rank) and error_all (agree on all ranks). */
#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void error_one_at(const char *file, int line, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    int size = comm_running() ? comm_size(COMM_WORLD) : 1;
    int rank = comm_running() ? comm_rank(COMM_WORLD) : 0;
    const char *f = strrchr(file, '/');
    f = f ? f + 1 : file;
    if (size > 1) fprintf(stderr, "dsv3: error: %s (rank %d, %s:%d)\n", msg, rank, f, line);
    else fprintf(stderr, "dsv3: error: %s (%s:%d)\n", msg, f, line);
    fflush(stdout);
    fflush(stderr);
    comm_abort(1);
}

int error_agree(comm_t c, int failed, char *err, int errlen) {
    int who = comm_lowest(c, failed);
    if (who < 0) return 0;
    comm_bcast(err, (size_t)errlen, who, c);
    return 1;
}

int error_all(comm_t c, int failed, char *err, int errlen) {
    if (!error_agree(c, failed, err, errlen)) return 0;
    if (comm_rank(c) == 0) {
        fprintf(stderr, "dsv3: error: %s\n", err[0] ? err : "failed");
        fflush(stderr);
    }
    return 1;
}
