#include "wring.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct wring {
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* any change of count, err or stop */
    int fd, first, count, stop, err; /* slots first .. first+count-1 (mod WRING_SLOTS) wait for the thread */
    size_t n[WRING_SLOTS];
    uint64_t off[WRING_SLOTS], unkicked;
    uint8_t *buf[WRING_SLOTS];
};

/* As ckpt.c's pwrite_all: every 16 MiB the kernel is told to start writing
 * back, so the final fsync finds little left. */
static int write_piece(wring *w, const uint8_t *b, size_t n, uint64_t off) {
    if ((w->unkicked += n) >= (16u << 20)) {
        sync_file_range(w->fd, 0, 0, SYNC_FILE_RANGE_WRITE); /* a hint: its failure changes nothing */
        w->unkicked = 0;
    }
    while (n > 0) {
        ssize_t k = pwrite(w->fd, b, n, (off_t)off);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return k < 0 ? errno : EIO;
        b += k, off += (uint64_t)k, n -= (size_t)k;
    }
    return 0;
}

static void *run(void *arg) {
    wring *w = arg;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (!w->count && !w->stop) pthread_cond_wait(&w->cv, &w->mu);
        if (!w->count) break; /* stopped, nothing left */
        int s = w->first, err = w->err;
        pthread_mutex_unlock(&w->mu);
        if (!err) err = write_piece(w, w->buf[s], w->n[s], w->off[s]); /* after a failure: dropped */
        pthread_mutex_lock(&w->mu);
        if (!w->err) w->err = err;
        w->first = (s + 1) % WRING_SLOTS, w->count--;
        pthread_cond_broadcast(&w->cv);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

wring *wring_open(int fd) {
    wring *w = calloc(1, sizeof *w);
    if (!w) return NULL;
    w->fd = fd;
    int ok = 1;
    for (int s = 0; s < WRING_SLOTS; s++) ok &= (w->buf[s] = malloc(WRING_PIECE)) != NULL;
    if (ok) {
        pthread_mutex_init(&w->mu, NULL);
        pthread_cond_init(&w->cv, NULL);
        int e = pthread_create(&w->th, NULL, run, w);
        if (!e) return w;
        pthread_cond_destroy(&w->cv);
        pthread_mutex_destroy(&w->mu);
        errno = e;
    } else
        errno = ENOMEM;
    for (int s = 0; s < WRING_SLOTS; s++) free(w->buf[s]);
    free(w);
    return NULL;
}

int wring_put(wring *w, const void *buf, size_t n, uint64_t off) {
    pthread_mutex_lock(&w->mu);
    while (w->count == WRING_SLOTS && !w->err) pthread_cond_wait(&w->cv, &w->mu);
    int err = w->err, s = (w->first + w->count) % WRING_SLOTS;
    pthread_mutex_unlock(&w->mu);
    if (err) return errno = err, -1;
    memcpy(w->buf[s], buf, n); /* slot s is the caller's until counted */
    w->n[s] = n, w->off[s] = off;
    pthread_mutex_lock(&w->mu);
    w->count++;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    return 0;
}

int wring_drain(wring *w) {
    pthread_mutex_lock(&w->mu);
    while (w->count) pthread_cond_wait(&w->cv, &w->mu);
    int err = w->err;
    pthread_mutex_unlock(&w->mu);
    return err ? (errno = err, -1) : 0;
}

int wring_close(wring *w) {
    if (!w) return 0;
    int rc = wring_drain(w), e = errno;
    pthread_mutex_lock(&w->mu);
    w->stop = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->th, NULL);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    for (int s = 0; s < WRING_SLOTS; s++) free(w->buf[s]);
    free(w);
    errno = e;
    return rc;
}
