/* dsv3-generate — text from a dsv3 checkpoint (src/generate.h: prefill, then
 * one token per step through the absorbed-MLA latent cache).
 *
 *   [mpirun -np N] dsv3-generate [options] CHECKPOINT.h5
 *
 * The checkpoint's own deck gives the model; N ranks split the routed experts
 * (expert parallel N, every rank runs every prompt, rank 0 prints). An
 * adapters-only checkpoint (checkpoint.save = "adapters") goes on top of its
 * base (--base, or the deck's run.init_from); LoRA adapters are merged into
 * the base weights at load (W += alpha/r·B·A).
 *
 * Text in and out goes through the tokenizer (--tokenizer, or the deck's
 * data.tokenizer; raw bytes for a byte-level model, data.format "text").
 * Raw text prompts get the tokenizer's bos token (tokenizer_config.json), as
 * Hugging Face's DeepSeek-V3 tokenizer adds it; --chat renders DeepSeek-V3's
 * chat template with the generation prompt (src/chat.h).
 *
 * --reference FILE.safetensors (tools/reference/make_generate_fixture.py):
 * greedy generation of its prompts compared with what transformers generated,
 * token for token and the per-step logits (relative L2 <= 1e-5); exit 1 on a
 * mismatch.
 *
 * Exit 0; 1 on bad input or a failure (one line naming it); 2 on usage errors.
 */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <mpi.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/chat.h"
#include "../src/ckpt.h"
#include "../src/deck.h"
#include "../src/generate.h"
#include "../src/model/model.h"
#include "../src/ops.h"
#include "../src/plan.h"
#include "../src/safetensors.h"
#include "../src/tool.h"
#include "../src/tokenizer.h"
#include "../src/zero.h"

static const char USAGE[] =
    "usage: dsv3-generate [options] CHECKPOINT.h5\n"
    "prompts (one kind):\n"
    "  --prompt TEXT          a text prompt (repeatable)\n"
    "  --prompts FILE         text prompts, one per line\n"
    "  --chat FILE            JSON lines {\"messages\": [{\"role\": ..., \"content\": ...}, ...]}: DeepSeek-V3's chat\n"
    "                         template with the generation prompt (roles system, user, assistant)\n"
    "  --ids FILE             JSON lines of token ids: [1, 2, 3] or {\"ids\": [1, 2, 3]}\n"
    "  --reference FILE       prompts of a make_generate_fixture.py fixture: greedy, compared with transformers\n"
    "model:\n"
    "  --base CKPT.h5         base weights of an adapters-only CHECKPOINT (default: its deck's run.init_from)\n"
    "  --tokenizer PATH       tokenizer.json (default: the deck's data.tokenizer; bytes for data.format \"text\")\n"
    "sampling (DeepSeek's generate.py):\n"
    "  --max-new-tokens N     (default 64)     --temperature T  (default 0: greedy)\n"
    "  --top-p P              (default 1: off) --top-k K        (default 0: off)\n"
    "  --seed S               (default 0)      --batch N        prompts decoded together (default 8)\n"
    "  --no-eos               do not stop at the model's eos_token_id\n"
    "  --mtp-draft            greedy self-speculative decoding: the MTP module drafts, the model verifies two\n"
    "                         tokens per pass (prints the acceptance rate; one prompt at a time)\n"
    "output:\n"
    "  --json FILE            JSON lines per prompt: index, prompt_tokens, prompt_ids, ids, logprobs, text, stop\n"
    "                         (eos, length, context); '-': stdout\n"
    "  -q                     no continuations on stdout (the summary line stays on stderr)\n";

static int rank0 = 1;


static void usage(const char *fmt, const char *arg) {
    if (rank0) {
        fputs("dsv3-generate: ", stderr);
        fprintf(stderr, fmt, arg);
        fprintf(stderr, "\n%s", USAGE);
    }
    MPI_Finalize();
    exit(2);
}

typedef struct {
    int32_t *ids;
    int n;
    char *text; /* the prompt as given (text and chat prompts), for the output */
} prompt;

typedef struct {
    prompt *p;
    int n, cap;
} prompts;

static void push(prompts *ps, const int32_t *ids, int n, const char *text) {
    if (ps->n == ps->cap) {
        ps->cap = ps->cap ? 2 * ps->cap : 16;
        ps->p = realloc(ps->p, (size_t)ps->cap * sizeof *ps->p);
        if (!ps->p) tool_die("out of memory for the prompts");
    }
    prompt *p = &ps->p[ps->n++];
    p->ids = malloc((size_t)(n > 0 ? n : 1) * sizeof *p->ids);
    if (!p->ids) tool_die("out of memory for the prompts");
    memcpy(p->ids, ids, (size_t)n * sizeof *ids);
    p->n = n;
    p->text = text ? strdup(text) : NULL;
}

/* ---- text <-> ids: the tokenizer, or raw bytes (byte-level models) ---- */

typedef struct {
    tok_tokenizer *t;
    chat_state chat;
    int have_chat; /* bos/eos and the chat tokens were found */
    char path[4096];
} textio;

static void encode_text(textio *io, const char *s, tok_ids *out) {
    out->n = 0;
    if (!io->t) {
        for (const unsigned char *u = (const unsigned char *)s; *u; u++)
            if (tok_ids_push(out, *u)) tool_die("out of memory");
        return;
    }
    if (io->have_chat && tok_ids_push(out, io->chat.bos)) tool_die("out of memory");
    if (tok_encode(io->chat.c, s, strlen(s), out)) tool_die("out of memory encoding a prompt");
}

/* decoded ids as valid UTF-8 (malloc'd); bytes for byte-level models */
static char *decode_ids(textio *io, const int32_t *ids, int n) {
    size_t len = 0, ln;
    char *raw;
    if (!io->t) {
        raw = malloc((size_t)n + 1);
        if (!raw) tool_die("out of memory");
        for (int i = 0; i < n; i++) raw[i] = (char)(ids[i] & 0xff);
        len = (size_t)n;
    } else {
        raw = tok_decode(io->t, ids, (size_t)n, &len);
        if (!raw) tool_die("a generated id is outside the tokenizer's vocabulary");
    }
    char *s = chat_utf8_lossy(raw, len, &ln);
    free(raw);
    if (!s) tool_die("out of memory");
    return s;
}

static char *read_line(FILE *f, char **buf, size_t *cap) {
    ssize_t n = getline(buf, cap, f);
    if (n < 0) return NULL;
    while (n > 0 && ((*buf)[n - 1] == '\n' || (*buf)[n - 1] == '\r')) (*buf)[--n] = 0;
    return *buf;
}

static FILE *open_in(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) tool_die("%s: cannot open: %s", path, strerror(errno));
    return f;
}

static void read_ids_file(prompts *ps, const char *path) {
    FILE *f = open_in(path);
    char *line = NULL;
    size_t cap = 0;
    long lineno = 0;
    int32_t *ids = NULL;
    while (read_line(f, &line, &cap)) {
        lineno++;
        if (!line[0]) continue;
        json_error_t je;
        json_t *j = json_loads(line, 0, &je), *a = j;
        if (!j) tool_die("%s:%ld: not JSON (%s)", path, lineno, je.text);
        if (json_is_object(j)) a = json_object_get(j, "ids");
        if (!json_is_array(a) || json_array_size(a) == 0)
            tool_die("%s:%ld: want a non-empty array of token ids, or {\"ids\": [...]}", path, lineno);
        size_t n = json_array_size(a), i;
        json_t *v;
        ids = realloc(ids, n * sizeof *ids);
        if (!ids) tool_die("out of memory");
        json_array_foreach(a, i, v) {
            if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX)
                tool_die("%s:%ld: element %zu is not a token id (a non-negative integer)", path, lineno, i);
            ids[i] = (int32_t)json_integer_value(v);
        }
        push(ps, ids, (int)n, NULL);
        json_decref(j);
    }
    free(ids), free(line);
    fclose(f);
}

static void read_text_file(prompts *ps, textio *io, const char *path) {
    FILE *f = open_in(path);
    char *line = NULL;
    size_t cap = 0;
    tok_ids v = {0};
    while (read_line(f, &line, &cap)) {
        if (!line[0]) continue;
        encode_text(io, line, &v);
        push(ps, v.ids, (int)v.n, line);
    }
    tok_ids_free(&v);
    free(line);
    fclose(f);
}

static void read_chat_file(prompts *ps, textio *io, const char *path) {
    if (!io->have_chat) tool_die("--chat needs the DeepSeek-V3 tokenizer (with tokenizer_config.json): %s", io->path);
    FILE *f = open_in(path);
    char *line = NULL;
    size_t cap = 0;
    long lineno = 0;
    while (read_line(f, &line, &cap)) {
        lineno++;
        if (!line[0]) continue;
        json_error_t je;
        json_t *j = json_loads(line, 0, &je);
        const char *why = j ? chat_render(&io->chat, j, 1) : je.text;
        if (why) tool_die("%s:%ld: %s", path, lineno, why);
        char *shown = json_dumps(json_object_get(j, "messages") ? json_object_get(j, "messages") : j, JSON_COMPACT);
        push(ps, io->chat.ids.ids, (int)io->chat.ids.n, shown);
        free(shown);
        json_decref(j);
    }
    free(line);
    fclose(f);
}

/* ---- the --reference fixture: prompt.K, ids.K (expected), logits.K [steps, V] ---- */

typedef struct {
    st_file f;
    int n;              /* prompts */
    int64_t **want;     /* [n][steps] */
    float **logits;     /* [n][steps * V] */
    int *steps;
    double worst_rel, worst_abs; /* max over steps of rel L2, of max|diff| / max|ref| */
    int mismatch;       /* first step where the tokens differ, per prompt (-1 none) in the check */
    int bad;
    int V;
} reference;

static int st_get(st_file *f, const char *fmt, int k, int want_dtype, int ndim, void **out, int64_t *shape) {
    char name[64];
    snprintf(name, sizeof name, fmt, k);
    int i = st_find(f, name);
    if (i < 0) return -1;
    const st_tensor *t = &f->t[i];
    if ((int)t->dtype != want_dtype || t->ndim != ndim) tool_die("reference: %s has the wrong dtype or rank", name);
    for (int d = 0; d < ndim; d++) shape[d] = t->shape[d];
    char err[512];
    *out = malloc(st_bytes(t) + 1);
    if (!*out || st_read(f, i, 0, st_bytes(t), *out, err, sizeof err)) tool_die("reference: %s", *out ? err : "out of memory");
    return 0;
}

static void read_reference(reference *r, prompts *ps, const char *path, int V) {
    char err[1024];
    memset(r, 0, sizeof *r);
    if (st_open(&r->f, path, err, sizeof err)) tool_die("%s", err);
    r->V = V;
    for (int k = 0;; k++) {
        void *p, *w, *l;
        int64_t sp[2], sw[2], sl[2];
        if (st_get(&r->f, "prompt.%d", k, ST_I64, 1, &p, sp)) break;
        if (st_get(&r->f, "ids.%d", k, ST_I64, 1, &w, sw) || st_get(&r->f, "logits.%d", k, ST_F32, 2, &l, sl))
            tool_die("%s: prompt.%d without ids.%d and logits.%d", path, k, k, k);
        if (sl[0] != sw[0] || sl[1] != V)
            tool_die("%s: logits.%d is [%lld, %lld], want [%lld, %d] (the checkpoint's vocabulary)", path, k,
                (long long)sl[0], (long long)sl[1], (long long)sw[0], V);
        int32_t *ids = malloc((size_t)sp[0] * sizeof *ids);
        for (int64_t i = 0; i < sp[0]; i++) ids[i] = (int32_t)((int64_t *)p)[i];
        push(ps, ids, (int)sp[0], NULL);
        free(ids), free(p);
        r->want = realloc(r->want, (size_t)(k + 1) * sizeof *r->want);
        r->logits = realloc(r->logits, (size_t)(k + 1) * sizeof *r->logits);
        r->steps = realloc(r->steps, (size_t)(k + 1) * sizeof *r->steps);
        r->want[k] = w, r->logits[k] = l, r->steps[k] = (int)sw[0];
        r->n = k + 1;
    }
    if (!r->n) tool_die("%s: no prompt.0 (a make_generate_fixture.py fixture)", path);
}

static void reference_step(void *ctx, int64_t index, int step, const float *lg, int V, int32_t token) {
    reference *r = ctx;
    if (index >= r->n || step >= r->steps[index]) return;
    const float *ref = r->logits[index] + (size_t)step * V;
    double num = 0, den = 0, mx = 0, ma = 0;
    for (int v = 0; v < V; v++) {
        double d = (double)lg[v] - ref[v];
        num += d * d, den += (double)ref[v] * ref[v];
        mx = fabs(d) > mx ? fabs(d) : mx, ma = fabs(ref[v]) > ma ? fabs(ref[v]) : ma;
    }
    double rel = sqrt(num / (den > 0 ? den : 1)), ab = mx / (ma > 0 ? ma : 1);
    r->worst_rel = rel > r->worst_rel ? rel : r->worst_rel;
    r->worst_abs = ab > r->worst_abs ? ab : r->worst_abs;
    if (token != r->want[index][step] && !r->bad) {
        if (rank0)
            fprintf(stderr, "dsv3-generate: reference: prompt %lld step %d: token %d, transformers chose %lld\n",
                    (long long)index, step, token, (long long)r->want[index][step]);
        r->bad = 1;
    }
    if (rel > 1e-5 && !r->bad) {
        if (rank0)
            fprintf(stderr, "dsv3-generate: reference: prompt %lld step %d: logits rel L2 %.3e > 1e-5\n",
                    (long long)index, step, rel);
        r->bad = 1;
    }
}

/* ---- main ---- */

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    tool_init("dsv3-generate", rank, size);
    rank0 = rank == 0;

    const char *ckpt = NULL, *base = NULL, *tokpath = NULL, *json_path = NULL, *ids_file = NULL;
    const char *prompts_file = NULL, *chat_file = NULL, *ref_file = NULL;
    const char **text = calloc((size_t)argc, sizeof *text);
    int n_text = 0, batch = 8, quiet = 0, no_eos = 0;
    gen_opts go = {.temperature = 0.0, .top_p = 1.0, .top_k = 0, .seed = 0, .max_new = 64, .eos = -1};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has = i + 1 < argc;
        char *end = NULL;
#define NEXT() (has ? argv[++i] : (usage("%s needs a value", a), ""))
        if (!strcmp(a, "--prompt")) text[n_text++] = NEXT();
        else if (!strcmp(a, "--prompts")) prompts_file = NEXT();
        else if (!strcmp(a, "--chat")) chat_file = NEXT();
        else if (!strcmp(a, "--ids")) ids_file = NEXT();
        else if (!strcmp(a, "--reference")) ref_file = NEXT();
        else if (!strcmp(a, "--base")) base = NEXT();
        else if (!strcmp(a, "--tokenizer")) tokpath = NEXT();
        else if (!strcmp(a, "--json")) json_path = NEXT();
        else if (!strcmp(a, "--no-eos")) no_eos = 1;
        else if (!strcmp(a, "--mtp-draft")) go.mtp_draft = 1;
        else if (!strcmp(a, "-q")) quiet = 1;
        else if (!strcmp(a, "--max-new-tokens") || !strcmp(a, "--top-k") || !strcmp(a, "--batch")) {
            const char *v = NEXT();
            long x = strtol(v, &end, 10);
            int lo = strcmp(a, "--top-k") ? 1 : 0;
            if (*v == 0 || *end || x < lo || x > 1 << 30) usage("bad integer value '%s'", v);
            if (!strcmp(a, "--max-new-tokens")) go.max_new = (int)x;
            else if (!strcmp(a, "--top-k")) go.top_k = (int)x;
            else batch = (int)x;
        } else if (!strcmp(a, "--temperature") || !strcmp(a, "--top-p")) {
            const char *v = NEXT();
            double x = strtod(v, &end);
            int is_t = !strcmp(a, "--temperature");
            if (*v == 0 || *end || !isfinite(x) || x < 0 || (!is_t && (x <= 0 || x > 1))) usage("bad value '%s'", v);
            if (is_t) go.temperature = x;
            else go.top_p = x;
        } else if (!strcmp(a, "--seed")) {
            const char *v = NEXT();
            unsigned long long x = strtoull(v, &end, 10);
            if (*v == 0 || *v == '-' || *end) usage("bad seed '%s'", v);
            go.seed = x;
        } else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            if (rank0) fputs(USAGE, stdout);
            MPI_Finalize();
            return 0;
        } else if (a[0] == '-') usage("unknown option '%s'", a);
        else if (!ckpt) ckpt = a;
        else usage("one checkpoint only ('%s')", a);
#undef NEXT
    }
    if (!ckpt) usage("%s", "no checkpoint given");
    int kinds = (n_text > 0) + !!prompts_file + !!chat_file + !!ids_file + !!ref_file;
    if (kinds != 1) usage("%s", "give one kind of prompts: --prompt, --prompts, --chat, --ids or --reference");
    if (ref_file && go.temperature > 0) usage("%s", "--reference is greedy (no --temperature)");
    if (go.mtp_draft && go.temperature > 0) usage("%s", "--mtp-draft is greedy (no --temperature)");

    /* the checkpoint's deck, laid out for this rank count: experts split over all ranks, no ZeRO */
    char err[4400];
    ckpt_in *in;
    if (ckpt_in_open(&in, ckpt, err, sizeof err)) tool_die("%s", err);
    if (!ckpt_in_deck(in)) tool_die("%s: no deck attribute (not a dsv3 checkpoint)", ckpt);
    char o1[64], o2[64], *over[] = {o1, o2, "parallel.zero_stage=0", "parallel.activation_checkpointing=false",
                                    "train.micro_batch=1"};
    snprintf(o1, sizeof o1, "parallel.expert_parallel=%d", size);
    snprintf(o2, sizeof o2, "train.global_batch=%d", size);
    deck d;
    if (deck_load_string(&d, ckpt_in_deck(in), ckpt, 5, over, size, err, sizeof err)) tool_die("%s: its deck: %s", ckpt, err);
    ckpt_in_close(in);
    const deck_model *mc = &d.model;
    int V = mc->vocab_size;
    if (!no_eos) go.eos = mc->eos_token_id;

    /* text in/out */
    textio io;
    memset(&io, 0, sizeof io);
    if (!tokpath && d.data.tokenizer[0]) tokpath = d.data.tokenizer;
    int bytes = !tokpath && !strcmp(d.data.format, "text") && V >= 256; /* byte-level model: text is its bytes */
    if (tokpath) {
        snprintf(io.path, sizeof io.path, "%s", tokpath);
        if (tok_load(&io.t, tokpath, err, sizeof err)) tool_die("%s", err);
        io.have_chat = chat_open(&io.chat, io.t, tokpath, err, sizeof err) == 0;
        if (!io.have_chat) {
            io.chat.c = tok_ctx_new(io.t);
            if (chat_file) tool_die("%s", err);
        }
    } else if ((n_text || prompts_file) && !bytes) {
        tool_die("text prompts need a tokenizer (--tokenizer, or the deck's data.tokenizer); %s is not a byte-level model "
            "(data.format \"text\", vocab_size >= 256)", ckpt);
    } else if (chat_file) {
        tool_die("--chat needs the DeepSeek-V3 tokenizer (--tokenizer)");
    }

    prompts ps = {0};
    reference ref;
    memset(&ref, 0, sizeof ref);
    tok_ids v = {0};
    for (int i = 0; i < n_text; i++) {
        encode_text(&io, text[i], &v);
        push(&ps, v.ids, (int)v.n, text[i]);
    }
    tok_ids_free(&v);
    if (prompts_file) read_text_file(&ps, &io, prompts_file);
    if (ids_file) read_ids_file(&ps, ids_file);
    if (chat_file) read_chat_file(&ps, &io, chat_file);
    if (ref_file) {
        read_reference(&ref, &ps, ref_file, V);
        go.eos = -1; /* the fixture's steps: transformers generated them without stopping */
        go.max_new = 0;
        for (int k = 0; k < ref.n; k++) go.max_new = ref.steps[k] > go.max_new ? ref.steps[k] : go.max_new;
    }
    if (ps.n == 0) tool_die("no prompts");
    for (int k = 0; k < ps.n; k++) {
        if (ps.p[k].n == 0) tool_die("prompt %d is empty", k);
        if (ps.p[k].n >= mc->max_position_embeddings)
            tool_die("prompt %d has %d tokens: it leaves no room in the model's context of %d "
                "(model.max_position_embeddings)", k, ps.p[k].n, mc->max_position_embeddings);
        for (int i = 0; i < ps.p[k].n; i++)
            if (ps.p[k].ids[i] < 0 || ps.p[k].ids[i] >= V)
                tool_die("prompt %d: token id %d outside the model's vocabulary [0, %d)", k, ps.p[k].ids[i], V);
    }

    /* model: plan, weights (base + adapters), LoRA merged */
    plan p;
    memset(&p, 0, sizeof p);
    if (plan_build(&p, &d, MPI_COMM_WORLD, err, sizeof err)) tool_die("%s", err);
    model_opts mo = deck_model_opts(&d);
    mo.seq_len = mc->max_position_embeddings; /* RoPE table for the whole context */
    mo.micro_batch = 0;                       /* activations laid out per call (model_reshape) */
    mo.checkpointing = 1;                     /* no backward: the blocks share one slot of component caches */
    model *m;
    if (model_create(&m, &mo, &p, err, sizeof err)) tool_die("%s", err);
    ckpt_state st = {.frozen = model_zero(m)->frozen};
    int layout = model_params_layout(m), olayout = zero_state_optim_layout(model_zero(m));
    if (ckpt_is_adapters_only(ckpt)) {
        if (!base && d.run.init_from[0]) base = d.run.init_from;
        if (!base) tool_die("%s holds adapters only and its deck has no run.init_from: give the base with --base", ckpt);
        if (ckpt_load(&p, &d, base, model_param_buffer(m), layout, NULL, NULL, olayout, &st, err, sizeof err))
            tool_die("base %s does not fit %s's model: %s", base, ckpt, err);
    } else if (base) {
        tool_die("--base is for adapters-only checkpoints; %s holds the whole model", ckpt);
    }
    if (ckpt_load(&p, &d, ckpt, model_param_buffer(m), layout, NULL, NULL, olayout, &st, err, sizeof err)) tool_die("%s", err);
    if (d.lora.enabled && model_merge_lora(m, err, sizeof err)) tool_die("%s", err);

    FILE *js = NULL;
    if (json_path && rank0) {
        js = strcmp(json_path, "-") ? fopen(json_path, "w") : stdout;
        if (!js) tool_die("%s: cannot write: %s", json_path, strerror(errno));
    }
    gen_seq *out = calloc((size_t)batch, sizeof *out);
    for (int b = 0; b < batch; b++) {
        out[b].ids = malloc((size_t)go.max_new * sizeof *out[b].ids);
        out[b].logprobs = malloc((size_t)go.max_new * sizeof *out[b].logprobs);
        if (!out[b].ids || !out[b].logprobs) tool_die("out of memory for %d new tokens", go.max_new);
    }
    const int32_t **pp = calloc((size_t)batch, sizeof *pp);
    int *lens = calloc((size_t)batch, sizeof *lens);
    gen_stats gs;
    memset(&gs, 0, sizeof gs);
    int64_t generated = 0;
    for (int k0 = 0; k0 < ps.n; k0 += batch) {
        int B = ps.n - k0 < batch ? ps.n - k0 : batch;
        for (int b = 0; b < B; b++) pp[b] = ps.p[k0 + b].ids, lens[b] = ps.p[k0 + b].n;
        if (gen_run(m, mc, p.world, pp, lens, B, k0, &go, out, ref_file ? reference_step : NULL, &ref, &gs, err,
                    sizeof err))
            tool_die("%s", err);
        for (int b = 0; b < B; b++) {
            const prompt *pr = &ps.p[k0 + b];
            generated += out[b].n;
            if (!rank0) continue;
            int nt = out[b].n - (out[b].n && out[b].ids[out[b].n - 1] == go.eos); /* text without the eos */
            char *txt = (io.t || bytes) ? decode_ids(&io, out[b].ids, nt) : NULL;
            if (!quiet) {
                if (pr->text) printf("=== %d: %s\n", k0 + b, pr->text);
                else printf("=== %d: %d prompt tokens\n", k0 + b, pr->n);
                if (txt) printf("%s\n", txt);
                else {
                    for (int i = 0; i < out[b].n; i++) printf("%s%d", i ? " " : "", out[b].ids[i]);
                    printf("\n");
                }
            }
            if (js) {
                json_t *o = json_object(), *ids = json_array(), *lp = json_array(), *pids = json_array();
                for (int i = 0; i < pr->n; i++) json_array_append_new(pids, json_integer(pr->ids[i]));
                for (int i = 0; i < out[b].n; i++) {
                    json_array_append_new(ids, json_integer(out[b].ids[i]));
                    json_array_append_new(lp, json_real(out[b].logprobs[i]));
                }
                json_object_set_new(o, "index", json_integer(k0 + b));
                json_object_set_new(o, "prompt_tokens", json_integer(pr->n));
                json_object_set_new(o, "prompt_ids", pids);
                json_object_set_new(o, "ids", ids);
                json_object_set_new(o, "logprobs", lp);
                if (txt) json_object_set_new(o, "text", json_string(txt));
                json_object_set_new(o, "stop", json_string(out[b].stop));
                char *line = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9));
                fprintf(js, "%s\n", line);
                free(line);
                json_decref(o);
            }
            free(txt);
        }
    }
    if (js && js != stdout) fclose(js);
    if (rank0) {
        double cache_bytes = (double)model_kv_floats_per_token(m) * sizeof(float);
        fprintf(stderr,
                "dsv3-generate: %d prompt%s, %lld new tokens on %d rank%s | prefill %lld tokens %.3f s | decode %lld "
                "steps %.3f s = %.1f tokens/s | latent cache %d x %d layers x 4 B = %.0f bytes/token\n",
                ps.n, ps.n == 1 ? "" : "s", (long long)generated, size, size == 1 ? "" : "s",
                (long long)gs.prefill_tokens, gs.prefill_s, (long long)gs.decode_steps, gs.decode_s,
                gs.decode_s > 0 ? gs.decode_tokens / gs.decode_s : 0.0, mc->kv_lora_rank + mc->qk_rope_head_dim,
                mc->num_hidden_layers, cache_bytes);
        if (go.mtp_draft)
            fprintf(stderr, "dsv3-generate: MTP drafts: %lld of %lld accepted (%.1f%%): %.2f tokens per verification pass\n",
                    (long long)gs.accepted, (long long)gs.drafts, gs.drafts ? 100.0 * gs.accepted / gs.drafts : 0.0,
                    gs.decode_steps ? (double)gs.decode_tokens / gs.decode_steps : 0.0);
    }
    int rc = 0;
    if (ref_file) {
        if (rank0)
            printf("dsv3-generate --reference %s: %d prompts x %d greedy tokens: %s token for token; per-step logits "
                   "max rel L2 %.3e (tol 1e-05), max |diff|/max|logit| %.3e: %s\n",
                   ref_file, ref.n, go.max_new, ref.bad ? "NOT" : "equal", ref.worst_rel, ref.worst_abs,
                   ref.bad ? "FAIL" : "PASS");
        rc = ref.bad;
    }
    model_free(m);
    plan_free(&p);
    deck_free(&d);
    MPI_Finalize();
    return rc;
}
