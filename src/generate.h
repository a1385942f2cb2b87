/* generate.h — text generation from a model: prefill every prompt in one pass,
 * then one token per step for the whole batch, through the latent KV cache
 * (model_decode, model/mla_decode.h), with DeepSeek's sampling.
 *
 * Sampling as DeepSeek-V3's generate.py: temperature 0 = greedy (argmax, the
 * lowest id on ties); else probabilities softmax(logits/temperature), optionally
 * cut to the top_k largest and then to the smallest set whose mass reaches
 * top_p, and the token = argmax p_i / E_i with E_i ~ Exp(1) (an exact draw from
 * the renormalised distribution). E_i comes from a counter-based generator
 * keyed by (seed, prompt index, step, token id), so a draw depends on nothing
 * else: not the batch a prompt sits in, nor the rank count.
 *
 * Self-speculative decoding (mtp_draft, greedy): the model's first MTP module
 * (spec §6) drafts token t+2 from the hidden state at t and token t+1; each
 * step the main model runs [current token, draft] in one pass and keeps the
 * draft when its own argmax agrees (then the second row gives one more token
 * for free). The output is the greedy output (up to fp32 rounding of a 2-row
 * pass); the gain is the acceptance rate. One prompt at a time.
 */
#ifndef DSV3_GENERATE_H
#define DSV3_GENERATE_H

#include <stdint.h>

#include "comm.h"
#include "model/model.h"

typedef struct {
    double temperature; /* 0 = greedy */
    double top_p;       /* (0, 1]; 1 = off */
    int top_k;          /* 0 = off */
    uint64_t seed;
    int max_new;        /* new tokens at most */
    int eos;            /* stop token, -1 = none */
    int mtp_draft;      /* greedy only: self-speculative decoding, the MTP module drafts the next token */
} gen_opts;

typedef struct {
    int32_t *ids;       /* [max_new] generated ids (the stop token included) */
    float *logprobs;    /* [max_new] log p(id) under the model (log-softmax of the logits, temperature 1) */
    int n;
    const char *stop;   /* "eos", "length" (max_new reached) or "context" (max_position_embeddings reached) */
} gen_seq;

/* Optional per-token hook: the logits [V] (host) the token `step` of prompt
 * `index` was drawn from, and the token. */
typedef void (*gen_step_fn)(void *ctx, int64_t index, int step, const float *logits, int V, int32_t token);

/* Wall time of a gen_run (accumulates over calls; the caller zeroes it). */
typedef struct {
    double prefill_s, decode_s;
    int64_t prefill_tokens, decode_steps, decode_tokens; /* decode_tokens: live sequences summed over the steps */
    int64_t drafts, accepted;                            /* MTP drafts verified, and accepted */
} gen_stats;

/* One token from logits[V] (host). work: [V] floats, idx: [V] ints (scratch). */
int32_t gen_sample(const float *logits, int V, const gen_opts *o, uint64_t index, int step, float *work, int *idx);

/* Generates for B prompts (prompt b: ids prompts[b][0..lens[b]), global index
 * first + b for the sampler) into out[b] (ids/logprobs arrays of max_new each,
 * allocated by the caller). Every rank of c calls with the same prompts; the
 * tokens rank 0 draws are broadcast over c, so all ranks continue alike
 * (experts stay expert-parallel inside model_decode). cfg: the model's config.
 * st (may be NULL) accumulates timings. 0, or -1 with err set (a prompt that
 * does not fit the context, no memory). */
int gen_run(model *m, const deck_model *cfg, comm_t c, const int32_t *const *prompts, const int *lens, int B,
            int64_t first, const gen_opts *o, gen_seq *out, gen_step_fn fn, void *ctx, gen_stats *st, char *err,
            int errlen);

#endif
