/* tb.h — TensorBoard event files written directly (no protobuf or TF library).
 *
 * File: <dir>/events.out.tfevents.<unix seconds>.<host>.<pid> (TensorBoard
 * finds files by the "tfevents" in the name). A TFRecord stream of Event
 * protos; each record is
 *     uint64 length | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)
 * little endian, masked_crc = ((crc >> 15) | (crc << 17)) + 0xa282ead8, crc32c =
 * Castagnoli. Event fields used: wall_time=1 (double), step=2 (int64),
 * file_version=3 ("brain.Event:2", first event only), summary=5 (Summary: value=1
 * repeated Value{tag=1 string, simple_value=2 float}), session_log=7
 * (SessionLog{status=1}: START marks a restart so readers drop stale steps). */
#ifndef DSV3_TB_H
#define DSV3_TB_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct {
    FILE *f;
    char path[4352];
} tb_writer;

/* Creates dir (and parents) and a new event file with the file_version event.
 * Returns 0 or -1 with err set. */
int tb_open(tb_writer *w, const char *dir, char *err, int errlen);
/* Marks a (re)start whose first step is `step`: readers drop earlier events with step >= it. */
int tb_start(tb_writer *w, int64_t step);
/* One Event at `step` holding n scalar values; flushed so a live reader sees it. */
int tb_scalars(tb_writer *w, int64_t step, int n, const char *const *tags, const double *vals);
void tb_close(tb_writer *w);

/* Exposed for tests. */
uint32_t tb_crc32c(const void *p, size_t n);
uint32_t tb_masked_crc(const void *p, size_t n);
/* Frames `data` as one TFRecord into f. */
int tb_write_record(FILE *f, const void *data, size_t n);

#endif
