/* tb.c — TensorBoard event files: TFRecord framing, crc32c and the few protobuf
 * fields of Event/Summary/SessionLog that scalars need (format in tb.h). */
#include "tb.h"
#include "fsutil.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* ---- crc32c (Castagnoli, reflected polynomial 0x82f63b78), table on first use ---- */
static uint32_t crc_table[256];
static int crc_ready;

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
        crc_table[i] = c;
    }
    crc_ready = 1;
}

uint32_t tb_crc32c(const void *p, size_t n) {
    if (!crc_ready) crc_init();
    const uint8_t *b = p;
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) c = crc_table[(c ^ b[i]) & 0xff] ^ (c >> 8);
    return c ^ 0xffffffffu;
}

uint32_t tb_masked_crc(const void *p, size_t n) {
    uint32_t c = tb_crc32c(p, n);
    return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

static void put_le(uint8_t *o, uint64_t v, int bytes) {
    for (int i = 0; i < bytes; i++) o[i] = (uint8_t)(v >> (8 * i));
}

int tb_write_record(FILE *f, const void *data, size_t n) {
    uint8_t head[12], foot[4];
    put_le(head, (uint64_t)n, 8);
    put_le(head + 8, tb_masked_crc(head, 8), 4);
    put_le(foot, tb_masked_crc(data, n), 4);
    if (fwrite(head, 1, 12, f) != 12 || (n && fwrite(data, 1, n, f) != n) || fwrite(foot, 1, 4, f) != 4) return -1;
    return 0;
}

/* ---- protobuf encoding into a growing buffer ---- */
typedef struct {
    uint8_t *p;
    size_t n, cap;
    int oom;
} pbuf;

static void pb_bytes(pbuf *b, const void *s, size_t n) {
    if (b->oom || n == 0) return;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n) cap *= 2;
        uint8_t *q = realloc(b->p, cap);
        if (!q) {
            b->oom = 1;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
}

static void pb_varint(pbuf *b, uint64_t v) {
    uint8_t o[10];
    int k = 0;
    do {
        o[k] = (uint8_t)(v & 0x7f);
        v >>= 7;
        if (v) o[k] |= 0x80;
        k++;
    } while (v);
    pb_bytes(b, o, (size_t)k);
}

enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_I32 = 5 };
static void pb_key(pbuf *b, int field, int wt) { pb_varint(b, (uint64_t)field << 3 | (uint64_t)wt); }

static void pb_double(pbuf *b, int field, double v) {
    uint64_t u;
    memcpy(&u, &v, 8);
    uint8_t o[8];
    put_le(o, u, 8);
    pb_key(b, field, WT_I64);
    pb_bytes(b, o, 8);
}

static void pb_float(pbuf *b, int field, float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    uint8_t o[4];
    put_le(o, u, 4);
    pb_key(b, field, WT_I32);
    pb_bytes(b, o, 4);
}

static void pb_len(pbuf *b, int field, const void *s, size_t n) {
    pb_key(b, field, WT_LEN);
    pb_varint(b, (uint64_t)n);
    pb_bytes(b, s, n);
}

static double wall_now(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + 1e-6 * (double)tv.tv_usec;
}

/* Event{wall_time, step, <payload field>} framed and flushed. */
static int write_event(tb_writer *w, int64_t step, int field, const pbuf *payload) {
    if (!w->f) return -1;
    pbuf ev = {0};
    pb_double(&ev, 1, wall_now());
    if (step) {
        pb_key(&ev, 2, WT_VARINT);
        pb_varint(&ev, (uint64_t)step);
    }
    pb_len(&ev, field, payload->p, payload->n);
    int rc = ev.oom ? -1 : tb_write_record(w->f, ev.p, ev.n);
    free(ev.p);
    if (rc == 0 && fflush(w->f) != 0) rc = -1;
    return rc;
}

int tb_open(tb_writer *w, const char *dir, char *err, int errlen) {
    memset(w, 0, sizeof *w);
    if (fs_mkdir_p(dir)) {
        snprintf(err, errlen, "logging.tensorboard: cannot create directory %s: %s", dir, strerror(errno));
        return -1;
    }
    char host[256] = "localhost";
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = 0;
    long long t = (long long)time(NULL);
    /* never overwrite: a second writer in the same second and process gets a suffix (sorts after) */
    for (int k = 0; k < 100 && !w->f; k++) {
        int len = snprintf(w->path, sizeof w->path, "%s/events.out.tfevents.%lld.%s.%ld", dir, t, host, (long)getpid());
        if (k) snprintf(w->path + len, sizeof w->path - (size_t)len, ".%d", k);
        w->f = fopen(w->path, "wbx");
        if (!w->f && errno != EEXIST) break;
    }
    if (!w->f) {
        snprintf(err, errlen, "logging.tensorboard: cannot write %s: %s", w->path, strerror(errno));
        return -1;
    }
    static const char version[] = "brain.Event:2";
    pbuf v = {.p = (uint8_t *)version, .n = sizeof version - 1};
    if (write_event(w, 0, 3, &v)) {
        snprintf(err, errlen, "logging.tensorboard: write error on %s", w->path);
        tb_close(w);
        return -1;
    }
    return 0;
}

int tb_start(tb_writer *w, int64_t step) {
    pbuf s = {0};
    pb_key(&s, 1, WT_VARINT); /* SessionLog.status = START (1) */
    pb_varint(&s, 1);
    int rc = s.oom ? -1 : write_event(w, step, 7, &s);
    free(s.p);
    return rc;
}

int tb_scalars(tb_writer *w, int64_t step, int n, const char *const *tags, const double *vals) {
    pbuf sum = {0}, val = {0};
    for (int i = 0; i < n; i++) {
        val.n = 0;
        pb_len(&val, 1, tags[i], strlen(tags[i]));
        pb_float(&val, 2, (float)vals[i]);
        if (val.oom) break;
        pb_len(&sum, 1, val.p, val.n);
    }
    int rc = (sum.oom || val.oom) ? -1 : write_event(w, step, 5, &sum);
    free(sum.p);
    free(val.p);
    return rc;
}

void tb_close(tb_writer *w) {
    if (w->f) fclose(w->f);
    w->f = NULL;
}
