/* tool.h — what the command-line tools (tools/dsv3-*.c) share: error exits
 * prefixed with the program's name, for an error every rank meets and for one
 * of this rank alone, and a monotonic clock. */
#ifndef DSV3_TOOL_H
#define DSV3_TOOL_H

/* The program name messages start with, this rank and the world size (the
 * defaults before the call: "dsv3", rank 0 of 1). */
void tool_init(const char *prog, int rank, int size);
/* An error every rank meets (same files, same options): rank 0 prints
 * "<prog>: <message>", every rank finalizes MPI and exits 1. */
void tool_die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
/* An error of this rank alone: it prints "<prog>: <message>" and ends the job
 * (MPI_Abort with several ranks; else finalize and exit 1). */
void tool_die_local(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
double tool_now(void); /* seconds, CLOCK_MONOTONIC */

#endif
