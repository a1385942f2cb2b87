/* error.h — one error discipline for the whole trainer (LAMMPS's
 * Error::one / Error::all, llm.c's *Check macros).
 *
 *   DSV3_CHECK(cond, fmt, ...)   an internal invariant: if it fails, this
 *                                rank prints the message with file:line and
 *                                ends the job (error_one).
 *   error_one(fmt, ...)          a failure only this rank sees in the middle
 *                                of collective work (out of memory in a
 *                                gather, a failed all-to-all): print once,
 *                                MPI_Abort. Never a hang.
 *   error_all(c, failed, err, n) a failure that all ranks reach at the same
 *                                point (bad input, a failed save): every rank
 *                                of c returns 1 if any failed, the lowest
 *                                failing rank's message is printed once (by
 *                                rank 0 of c) and copied into err on every
 *                                rank. Callers then unwind and exit non-zero.
 *
 * Functions that can fail for reasons outside the program (files, memory,
 * input) return int (0 = ok) and write a one-line message into an
 * (err, errlen) buffer; their callers pass that to error_all. No abort(), no
 * ignored return code.
 */
#ifndef DSV3_ERROR_H
#define DSV3_ERROR_H

#include "comm.h"

void error_one_at(const char *file, int line, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 3, 4)));
#define error_one(...) error_one_at(__FILE__, __LINE__, __VA_ARGS__)

#define DSV3_CHECK(cond, ...)                                                                                    \
    do {                                                                                                         \
        if (!(cond)) error_one_at(__FILE__, __LINE__, __VA_ARGS__);                                              \
    } while (0)

/* Agree on failure over c (collective). Returns 1 on every rank if any rank
 * passed failed != 0, else 0. Rank 0 of c prints "dsv3: error: <message of
 * the lowest failing rank>"; err holds that message on every rank. */
int error_all(comm_t c, int failed, char *err, int errlen);
/* The same without printing (callers that add context first). */
int error_agree(comm_t c, int failed, char *err, int errlen);

#endif
