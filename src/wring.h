/* A background writer: one thread that pwrites pieces handed to it through a
 * small ring of buffers (WRING_SLOTS x WRING_PIECE bytes, 2 MiB), so the
 * caller converts and checksums the next piece while the kernel copies this
 * one into the page cache. The caller blocks only when the ring is full. The
 * first failed pwrite stops the writing; its errno is returned by the next
 * wring_put / wring_drain, so no failure is lost. */
#ifndef DSV3_WRING_H
#define DSV3_WRING_H

#include <stddef.h>
#include <stdint.h>

enum { WRING_SLOTS = 4, WRING_PIECE = 512 << 10 };

typedef struct wring wring;

/* NULL (errno set) when out of memory or no thread could be started. */
wring *wring_open(int fd);
/* A copy of buf[0, n) (n <= WRING_PIECE) to be written at off. -1 (errno): an
 * earlier write failed. */
int wring_put(wring *w, const void *buf, size_t n, uint64_t off);
/* Waits until every piece put is written. -1 (errno): a write failed. */
int wring_drain(wring *w);
/* Drains, stops the thread, frees; the result of wring_drain. NULL: 0. */
int wring_close(wring *w);

#endif
