/* comm.c — MPI wrappers: fatal errors, scalar reductions, ZeRO
 * reduce-scatter / all-gather over row-aligned shards (plan.h). */
#include "comm.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static size_t chunk_limit = INT_MAX;

size_t comm_set_chunk_limit(size_t floats) {
    size_t old = chunk_limit;
    chunk_limit = floats > 0 && floats <= INT_MAX ? floats : INT_MAX;
    return old;
}

void comm_fatal(const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    int init = 0, fin = 0, size = 1, rank = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (init && !fin) {
        MPI_Comm_size(MPI_COMM_WORLD, &size);
        MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    }
    if (size > 1) fprintf(stderr, "dsv3: error: %s (rank %d)\n", msg, rank);
    else fprintf(stderr, "dsv3: error: %s\n", msg);
    fflush(stderr);
    fflush(stdout);
    if (init && !fin) MPI_Abort(MPI_COMM_WORLD, 1);
    exit(1);
}

double comm_allreduce_sum_double(double x, MPI_Comm c) {
    double y = 0;
    MPI_Allreduce(&x, &y, 1, MPI_DOUBLE, MPI_SUM, c);
    return y;
}

void comm_allreduce_sum_doubles(double *x, int n, MPI_Comm c) {
    if (n > 0) MPI_Allreduce(MPI_IN_PLACE, x, n, MPI_DOUBLE, MPI_SUM, c);
}

/* Offsets/counts of the chosen layout; checks the communicator matches. */
static int layout(const plan_shard *s, int compact, MPI_Comm c, const size_t **off, const size_t **cnt, int *me,
                  int *small) {
    int n;
    MPI_Comm_size(c, &n);
    MPI_Comm_rank(c, me);
    if (n != s->nmemb) return -1;
    *off = compact ? s->toff : s->off;
    *cnt = compact ? s->tcnt : s->cnt;
    size_t total = 0;
    *small = 1;
    for (int k = 0; k < n; k++) {
        total += (*cnt)[k];
        if ((*cnt)[k] > chunk_limit) *small = 0;
    }
    if (total > chunk_limit) *small = 0;
    return 0;
}

int comm_reduce_scatter(const plan_shard *s, int compact, MPI_Comm c, const float *full, float *mine) {
    const size_t *off, *cnt;
    int me, small;
    if (layout(s, compact, c, &off, &cnt, &me, &small)) return -1;
    int n = s->nmemb;
    if (small) {
        /* The members' ranges are consecutive from offset off[0] = 0. */
        int *rc = malloc((size_t)n * sizeof *rc);
        if (!rc) return -1;
        for (int k = 0; k < n; k++) rc[k] = (int)cnt[k];
        int e = MPI_Reduce_scatter(full, mine, rc, MPI_FLOAT, MPI_SUM, c);
        free(rc);
        return e == MPI_SUCCESS ? 0 : -1;
    }
    /* Large segments: one rooted reduce per member and chunk, same order everywhere. */
    for (int k = 0; k < n; k++)
        for (size_t done = 0; done < cnt[k]; done += chunk_limit) {
            size_t len = cnt[k] - done < chunk_limit ? cnt[k] - done : chunk_limit;
            if (MPI_Reduce(full + off[k] + done, k == me ? mine + done : NULL, (int)len, MPI_FLOAT, MPI_SUM, k, c) !=
                MPI_SUCCESS)
                return -1;
        }
    return 0;
}

int comm_allgather(const plan_shard *s, int compact, MPI_Comm c, const float *mine, float *full) {
    const size_t *off, *cnt;
    int me, small;
    if (layout(s, compact, c, &off, &cnt, &me, &small)) return -1;
    int n = s->nmemb;
    if (small) {
        int *rc = malloc((size_t)n * sizeof *rc), *dis = malloc((size_t)n * sizeof *dis);
        if (!rc || !dis) {
            free(rc);
            free(dis);
            return -1;
        }
        for (int k = 0; k < n; k++) {
            rc[k] = (int)cnt[k];
            dis[k] = (int)off[k];
        }
        int e = MPI_Allgatherv(mine, rc[me], MPI_FLOAT, full, rc, dis, MPI_FLOAT, c);
        free(rc);
        free(dis);
        return e == MPI_SUCCESS ? 0 : -1;
    }
    for (int k = 0; k < n; k++)
        for (size_t done = 0; done < cnt[k]; done += chunk_limit) {
            size_t len = cnt[k] - done < chunk_limit ? cnt[k] - done : chunk_limit;
            float *dst = full + off[k] + done;
            if (k == me) memcpy(dst, mine + done, len * sizeof *dst);
            if (MPI_Bcast(dst, (int)len, MPI_FLOAT, k, c) != MPI_SUCCESS) return -1;
        }
    return 0;
}

int comm_zero_reduce_scatter(const plan *p, int seg, int compact, const float *full, float *mine) {
    return comm_reduce_scatter(&p->shard[seg], compact, plan_seg_comm(p, seg), full, mine);
}

int comm_zero_allgather(const plan *p, int seg, int compact, const float *mine, float *full) {
    return comm_allgather(&p->shard[seg], compact, plan_seg_comm(p, seg), mine, full);
}
