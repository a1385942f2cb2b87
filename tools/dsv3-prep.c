/* dsv3-prep — tokenize data for dsv3 (issue 6).
 *
 *   dsv3-prep encode   --tokenizer T/tokenizer.json   < {"text": ...} lines > {"ids": [...]} lines
 *   dsv3-prep decode   --tokenizer T/tokenizer.json   < {"ids": [...]} lines > {"text": ...} lines
 *   dsv3-prep pretrain --tokenizer T --input FILE... --output PREFIX
 *                      [--separator LINE] [--threads N] [--on-error stop|skip]
 *       plain text (a file is one document, or documents split at lines equal to
 *       --separator, e.g. "%" for fortune files) or JSON lines (*.jsonl, *.json:
 *       the "text" field) -> Megatron-LM PREFIX.bin/.idx, EOS after each document,
 *       uint16 ids if the vocabulary fits in 65535, else int32.
 *   dsv3-prep sft      --tokenizer T --template deepseek-v3 --input data.jsonl --output PREFIX
 *                      [--max-len N] [--on-error stop|skip]
 *       Alpaca lines {instruction, input, output} or {messages: [{role, content}]}
 *       -> PREFIX.bin/.idx token ids + PREFIX.mask.bin/.idx (uint8, 1 = assistant token
 *       trained on), formatted as DeepSeek-V3's chat template: bos, system prompt,
 *       <｜User｜>content, <｜Assistant｜>content eos.
 *       --tokenizer bytes: byte-level ids for byte models (input/models/tiny.cfg,
 *       vocab_size 256, the ids data.format "text" reads): id = byte value, BOS and
 *       EOS the ids --bos-id / --eos-id (default 0 and 1, tiny.cfg's bos_token_id and
 *       eos_token_id); a byte vocabulary has no special tokens, so the template's
 *       role markers <｜User｜> and <｜Assistant｜> are written as their UTF-8 bytes.
 * BOS/EOS come from tokenizer_config.json next to tokenizer.json (bos_token, eos_token).
 */
#include <errno.h>
#include <jansson.h>
#include <omp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "chat.h"
#include "data.h"
#include "tokenizer.h"
#include "tool.h"

static void usage(FILE *f) {
    fputs("usage: dsv3-prep encode   --tokenizer tokenizer.json  < {\"text\":...} lines\n"
          "       dsv3-prep decode   --tokenizer tokenizer.json  < {\"ids\":[...]} lines\n"
          "       dsv3-prep pretrain --tokenizer T --input FILE... --output PREFIX [--separator LINE]\n"
          "                          [--threads N] [--on-error stop|skip]\n"
          "       dsv3-prep sft      --tokenizer T --template deepseek-v3 --input data.jsonl --output PREFIX\n"
          "                          [--max-len N] [--on-error stop|skip]\n"
          "       dsv3-prep sft      --tokenizer bytes [--bos-id 0] [--eos-id 1] ...   (byte-level models)\n",
          f);
}

typedef struct {
    const char *cmd, *tokenizer, *output, *template_, *separator;
    const char **inputs;
    int n_inputs;
    int threads, max_len;
    int bos_id, eos_id;      /* --tokenizer bytes: BOS/EOS ids */
    bool skip_errors;
    bool bytes;              /* --tokenizer bytes */
} opts;

static int parse_args(int argc, char **argv, opts *o) {
    memset(o, 0, sizeof *o);
    o->max_len = 4096;
    o->bos_id = -1;
    o->eos_id = -1;
    o->inputs = calloc((size_t)argc, sizeof *o->inputs);
    if (argc < 2) return -1;
    o->cmd = argv[1];
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        bool has = i + 1 < argc;
        if (!strcmp(a, "--tokenizer") && has) o->tokenizer = argv[++i];
        else if (!strcmp(a, "--output") && has) o->output = argv[++i];
        else if (!strcmp(a, "--template") && has) o->template_ = argv[++i];
        else if (!strcmp(a, "--separator") && has) o->separator = argv[++i];
        else if (!strcmp(a, "--threads") && has) o->threads = atoi(argv[++i]);
        else if (!strcmp(a, "--max-len") && has) o->max_len = atoi(argv[++i]);
        else if (!strcmp(a, "--bos-id") && has) o->bos_id = atoi(argv[++i]);
        else if (!strcmp(a, "--eos-id") && has) o->eos_id = atoi(argv[++i]);
        else if (!strcmp(a, "--on-error") && has) {
            const char *v = argv[++i];
            if (!strcmp(v, "skip")) o->skip_errors = true;
            else if (!strcmp(v, "stop")) o->skip_errors = false;
            else { fprintf(stderr, "dsv3-prep: --on-error takes stop or skip, not %s\n", v); return -1; }
        } else if (!strcmp(a, "--input") && has) {
            while (i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0) o->inputs[o->n_inputs++] = argv[++i];
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            exit(0);
        } else {
            fprintf(stderr, "dsv3-prep: unknown or incomplete option %s\n", a);
            return -1;
        }
    }
    if (!o->tokenizer) { fprintf(stderr, "dsv3-prep %s: --tokenizer is required\n", o->cmd); return -1; }
    o->bytes = !strcmp(o->tokenizer, "bytes");
    if (o->bytes && strcmp(o->cmd, "sft") != 0) {
        fprintf(stderr, "dsv3-prep %s: --tokenizer bytes is for sft only (byte-level pretraining reads the text "
                "itself: data.format = \"text\")\n", o->cmd);
        return -1;
    }
    if (!o->bytes && (o->bos_id >= 0 || o->eos_id >= 0)) {
        fprintf(stderr, "dsv3-prep %s: --bos-id / --eos-id go with --tokenizer bytes (a tokenizer.json names its "
                "own in tokenizer_config.json)\n", o->cmd);
        return -1;
    }
    if (o->bytes) {
        if (o->bos_id < 0) o->bos_id = 0;
        if (o->eos_id < 0) o->eos_id = 1;
        if (o->bos_id > 255 || o->eos_id > 255) {
            fprintf(stderr, "dsv3-prep sft: --bos-id %d / --eos-id %d must be byte ids 0..255\n", o->bos_id, o->eos_id);
            return -1;
        }
    }
    return 0;
}

/* bos/eos token strings from tokenizer_config.json beside tokenizer.json (chat.c) */
static int special_id(const tok_tokenizer *t, const char *tokpath, const char *key, int32_t *id) {
    char err[4400];
    if (!chat_special_id(t, tokpath, key, id, err, sizeof err)) return 0;
    fprintf(stderr, "dsv3-prep: %s\n", err);
    return -1;
}

static void write_ids(FILE *f, const tok_ids *v) {
    static char *buf;
    static size_t cap;
    if (cap < v->n * 13 + 16) {
        cap = v->n * 13 + 16;
        buf = realloc(buf, cap);
    }
    size_t o = 0;
    memcpy(buf, "{\"ids\": [", 9);
    o = 9;
    for (size_t i = 0; i < v->n; i++) { /* ids are >= 0 */
        if (i) { buf[o++] = ','; buf[o++] = ' '; }
        char tmp[12];
        int k = 0;
        uint32_t x = (uint32_t)v->ids[i];
        do { tmp[k++] = (char)('0' + x % 10); x /= 10; } while (x);
        while (k) buf[o++] = tmp[--k];
    }
    memcpy(buf + o, "]}\n", 3);
    fwrite(buf, 1, o + 3, f);
}

/* ---------------- encode / decode ---------------- */

static int cmd_encode(const opts *o, tok_tokenizer *t, bool decode) {
    tok_ctx *c = tok_ctx_new(t);
    tok_ids v = {0};
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    long lineno = 0, bad = 0;
    static char obuf[1 << 16];
    setvbuf(stdout, obuf, _IOFBF, sizeof obuf);
    while ((n = getline(&line, &cap, stdin)) > 0) {
        lineno++;
        json_error_t je;
        json_t *j = json_loadb(line, (size_t)n, JSON_ALLOW_NUL | JSON_DISABLE_EOF_CHECK, &je);
        const char *why = NULL;
        if (!j) why = je.text;
        if (!decode) {
            json_t *tx = json_object_get(j, "text");
            if (!why && !json_is_string(tx)) why = "no \"text\" string";
            if (!why) {
                v.n = 0;
                if (tok_encode(c, json_string_value(tx), json_string_length(tx), &v)) {
                    fprintf(stderr, "dsv3-prep encode: out of memory\n");
                    return 1;
                }
                write_ids(stdout, &v);
            }
        } else {
            json_t *ids = json_object_get(j, "ids");
            if (!why && !json_is_array(ids)) why = "no \"ids\" array";
            v.n = 0;
            size_t i;
            json_t *x;
            if (!why) json_array_foreach(ids, i, x) {
                    if (!json_is_integer(x) || json_integer_value(x) < 0 || json_integer_value(x) >= tok_vocab_size(t)) {
                        why = "ids must be integers in [0, vocab size)";
                        break;
                    }
                    tok_ids_push(&v, (int32_t)json_integer_value(x));
                }
            size_t len = 0;
            char *s = why ? NULL : tok_decode(t, v.ids, v.n, &len);
            if (!why && !s) why = "an id has no token";
            if (!why) {
                size_t ln;
                char *u = chat_utf8_lossy(s, len, &ln);
                json_t *out = json_object();
                json_object_set_new(out, "text", json_stringn(u, ln));
                char *d = json_dumps(out, JSON_COMPACT | JSON_ENSURE_ASCII);
                fprintf(stdout, "%s\n", d);
                free(d);
                json_decref(out);
                free(u);
            }
            free(s);
        }
        json_decref(j);
        if (why) {
            fprintf(stderr, "dsv3-prep %s: stdin:%ld: %s\n", o->cmd, lineno, why);
            bad++;
            if (!o->skip_errors) return 1;
        }
    }
    free(line);
    tok_ids_free(&v);
    tok_ctx_free(c);
    fflush(stdout);
    if (bad) fprintf(stderr, "dsv3-prep %s: %ld malformed line(s) skipped\n", o->cmd, bad);
    return 0;
}

/* ---------------- pretrain ---------------- */

typedef struct {
    char *raw; size_t len;   /* a JSON line (parsed in the parallel region) or the document text */
    bool json;
    const char *path; long lineno;
    const char *bad;         /* parse error (JSON lines) */
    size_t text_bytes;
    tok_ids ids;
} doc;

typedef struct {
    FILE *f;
    const char *path;
    bool jsonl;
    long lineno;
    char *line; size_t cap;
} reader;

static bool is_jsonl(const char *p) {
    size_t n = strlen(p);
    return (n > 6 && !strcmp(p + n - 6, ".jsonl")) || (n > 5 && !strcmp(p + n - 5, ".json"));
}

/* next raw document of the current file: 1 got one, 0 end of file */
static int next_doc(reader *r, const opts *o, doc *d) {
    ssize_t n;
    d->path = r->path;
    d->json = r->jsonl;
    d->bad = NULL;
    if (r->jsonl) {
        while ((n = getline(&r->line, &r->cap, r->f)) > 0) {
            r->lineno++;
            if (n == 1 && r->line[0] == '\n') continue;
            d->raw = malloc((size_t)n + 1);
            memcpy(d->raw, r->line, (size_t)n + 1);
            d->len = (size_t)n;
            d->lineno = r->lineno;
            return 1;
        }
        return 0;
    }
    /* plain text: whole file, or up to a separator line */
    size_t cap = 1 << 12, len = 0;
    char *buf = malloc(cap);
    d->lineno = r->lineno + 1;
    while ((n = getline(&r->line, &r->cap, r->f)) > 0) {
        r->lineno++;
        if (o->separator) {
            size_t l = (size_t)n;
            if (l && r->line[l - 1] == '\n') l--;
            if (l == strlen(o->separator) && !memcmp(r->line, o->separator, l)) {
                if (len == 0) { d->lineno = r->lineno + 1; continue; }
                break;
            }
        }
        if (len + (size_t)n + 1 > cap) {
            while (len + (size_t)n + 1 > cap) cap *= 2;
            buf = realloc(buf, cap);
        }
        memcpy(buf + len, r->line, (size_t)n);
        len += (size_t)n;
    }
    if (len == 0) { free(buf); return 0; }
    buf[len] = 0;
    d->raw = buf;
    d->len = len;
    return 1;
}

/* parse (JSON lines) and encode one document, EOS appended; 0 ok, -1 out of memory */
static int encode_doc(tok_ctx *c, doc *d, int32_t eos) {
    d->ids.n = 0;
    const char *text = d->raw;
    size_t len = d->len;
    json_t *j = NULL;
    if (d->json) {
        json_error_t je;
        j = json_loadb(d->raw, d->len, JSON_ALLOW_NUL | JSON_DISABLE_EOF_CHECK, &je);
        json_t *tx = json_object_get(j, "text");
        if (!j || !json_is_string(tx)) {
            d->bad = j ? "no \"text\" string" : "not valid JSON";
            json_decref(j);
            return 0;
        }
        text = json_string_value(tx);
        len = json_string_length(tx);
    }
    d->text_bytes = len;
    int rc = tok_encode(c, text, len, &d->ids) || tok_ids_push(&d->ids, eos);
    json_decref(j);
    return rc ? -1 : 0;
}

static int cmd_pretrain(const opts *o, tok_tokenizer *t) {
    if (!o->n_inputs || !o->output) { fprintf(stderr, "dsv3-prep pretrain: --input and --output are required\n"); return 2; }
    int32_t eos;
    if (special_id(t, o->tokenizer, "eos_token", &eos)) return 1;
    for (int i = 0; i < o->n_inputs; i++)
        if (access(o->inputs[i], R_OK) != 0) {
            fprintf(stderr, "dsv3-prep pretrain: %s: cannot open: %s\n", o->inputs[i], strerror(errno));
            return 1;
        }
    int dtype = tok_vocab_size(t) > 65535 ? 4 : 8;
    int threads = o->threads > 0 ? o->threads : omp_get_num_procs();
    char err[512];
    data_mmidx_writer *w;
    if (data_mmidx_writer_open(&w, o->output, dtype, err, sizeof err)) { fprintf(stderr, "dsv3-prep: %s\n", err); return 1; }
    tok_ctx **ctx = calloc((size_t)threads, sizeof *ctx);
    for (int i = 0; i < threads; i++) ctx[i] = tok_ctx_new(t);
    enum { BATCH = 4096 };
    doc *batch = calloc(BATCH, sizeof *batch);
    long n_docs = 0, bad = 0;
    int64_t n_tokens = 0;
    double bytes = 0, t0 = tool_now(), last = t0;
    int fi = 0;
    reader r = {0};
    bool tty = isatty(2);
    int rc = 0;
    for (;;) {
        /* read a batch of raw documents (sequential), parse + encode it (parallel), write in order */
        int nb = 0;
        size_t batch_bytes = 0;
        while (nb < BATCH && batch_bytes < (32u << 20)) {
            if (!r.f) {
                if (fi == o->n_inputs) break;
                r.path = o->inputs[fi++];
                r.f = fopen(r.path, "rb");
                r.jsonl = is_jsonl(r.path);
                r.lineno = 0;
                if (!r.f) { fprintf(stderr, "dsv3-prep pretrain: %s: cannot open: %s\n", r.path, strerror(errno)); rc = 1; goto out; }
            }
            if (!next_doc(&r, o, &batch[nb])) { fclose(r.f); r.f = NULL; continue; }
            batch_bytes += batch[nb].len;
            nb++;
        }
        if (nb == 0) break;
        int fail = 0;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 16) reduction(| : fail)
        for (int i = 0; i < nb; i++) fail |= encode_doc(ctx[omp_get_thread_num()], &batch[i], eos) != 0;
        if (fail) { fprintf(stderr, "dsv3-prep pretrain: out of memory\n"); rc = 1; goto out; }
        for (int i = 0; i < nb; i++) {
            doc *d = &batch[i];
            if (d->bad) {
                fprintf(stderr, "%sdsv3-prep pretrain: %s:%ld: %s\n", tty ? "\n" : "", d->path, d->lineno, d->bad);
                bad++;
                if (!o->skip_errors) { rc = 1; goto out; }
                continue;
            }
            tok_ids *v = &d->ids;
            if (dtype == 8) { /* narrow in place */
                uint16_t *u = (uint16_t *)(void *)v->ids;
                for (size_t k = 0; k < v->n; k++) u[k] = (uint16_t)v->ids[k];
            }
            if (data_mmidx_writer_add(w, v->ids, (int64_t)v->n)) {
                fprintf(stderr, "dsv3-prep pretrain: %s.bin: write failed\n", o->output);
                rc = 1;
                goto out;
            }
            n_tokens += (int64_t)v->n;
            bytes += (double)d->text_bytes;
            n_docs++;
        }
        for (int i = 0; i < nb; i++) {
            free(batch[i].raw);
            batch[i].raw = NULL;
            tok_ids_free(&batch[i].ids);
        }
        double tn = tool_now();
        if (tn - last > 1.0) {
            last = tn;
            fprintf(stderr, "%sdsv3-prep pretrain: %ld documents, %lld tokens, %.1f MB, %.1f MB/s%s", tty ? "\r" : "",
                    n_docs, (long long)n_tokens, bytes / 1e6, bytes / 1e6 / (tn - t0), tty ? "" : "\n");
        }
    }
    if (n_docs == 0) { fprintf(stderr, "dsv3-prep pretrain: no documents in the input\n"); rc = 1; goto out; }
    if (data_mmidx_writer_close(w, err, sizeof err)) { w = NULL; fprintf(stderr, "dsv3-prep: %s\n", err); rc = 1; goto out; }
    w = NULL;
    double dt = tool_now() - t0;
    fprintf(stderr, "%sdsv3-prep pretrain: %ld documents, %lld tokens (%s), %.2f MB in %.2f s = %.2f MB/s on %d threads -> %s.bin/.idx\n",
            tty ? "\r" : "", n_docs, (long long)n_tokens, dtype == 4 ? "int32" : "uint16", bytes / 1e6, dt,
            bytes / 1e6 / (dt > 0 ? dt : 1e-9), threads, o->output);
    if (bad) fprintf(stderr, "dsv3-prep pretrain: %ld malformed line(s) skipped\n", bad);
out:
    if (w) data_mmidx_writer_abort(w); /* failed: nothing half-written, an older dataset stays intact */
    if (r.f) fclose(r.f);
    free(r.line);
    for (int i = 0; i < BATCH; i++) { free(batch[i].raw); tok_ids_free(&batch[i].ids); }
    free(batch);
    for (int i = 0; i < threads; i++) tok_ctx_free(ctx[i]);
    free(ctx);
    return rc;
}

/* ---------------- sft ---------------- */

static int cmd_sft(const opts *o, tok_tokenizer *t) {
    if (o->n_inputs != 1 || !o->output) { fprintf(stderr, "dsv3-prep sft: one --input and --output are required\n"); return 2; }
    if (!o->template_ || strcmp(o->template_, "deepseek-v3") != 0) {
        fprintf(stderr, "dsv3-prep sft: --template deepseek-v3 is the supported template (got %s)\n",
                o->template_ ? o->template_ : "none");
        return 2;
    }
    if (o->max_len < 2) { fprintf(stderr, "dsv3-prep sft: --max-len %d must be >= 2\n", o->max_len); return 2; }
    chat_state s;
    char cerr[4400];
    if (o->bytes ? chat_open_bytes(&s, o->bos_id, o->eos_id, cerr, sizeof cerr)
                 : chat_open(&s, t, o->tokenizer, cerr, sizeof cerr)) {
        fprintf(stderr, "dsv3-prep sft: %s\n", cerr);
        return 1;
    }
    FILE *in = fopen(o->inputs[0], "rb");
    if (!in) { fprintf(stderr, "dsv3-prep sft: %s: cannot open: %s\n", o->inputs[0], strerror(errno)); return 1; }
    int dtype = !o->bytes && tok_vocab_size(t) > 65535 ? 4 : 8;
    char err[512], mp[4096];
    snprintf(mp, sizeof mp, "%s.mask", o->output);
    data_mmidx_writer *w = NULL, *wm = NULL;
    if (data_mmidx_writer_open(&w, o->output, dtype, err, sizeof err) ||
        data_mmidx_writer_open(&wm, mp, 1, err, sizeof err)) {
        fprintf(stderr, "dsv3-prep: %s\n", err);
        return 1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    long lineno = 0, samples = 0, bad = 0, truncated = 0, dropped = 0;
    int64_t tokens = 0, trained = 0;
    uint8_t *m8 = NULL;
    uint16_t *u16 = NULL;
    size_t m8cap = 0;
    int rc = 0;
    double t0 = tool_now();
    while ((n = getline(&line, &cap, in)) > 0) {
        lineno++;
        if (n == 1 && line[0] == '\n') continue;
        json_error_t je;
        json_t *j = json_loadb(line, (size_t)n, JSON_ALLOW_NUL | JSON_DISABLE_EOF_CHECK, &je);
        const char *why = j ? chat_render(&s, j, 0) : je.text;
        json_decref(j);
        if (why) {
            fprintf(stderr, "dsv3-prep sft: %s:%ld: %s\n", o->inputs[0], lineno, why);
            bad++;
            if (!o->skip_errors) { rc = 1; break; }
            continue;
        }
        size_t len = s.ids.n;
        if (len > (size_t)o->max_len) { len = (size_t)o->max_len; truncated++; }
        int64_t on = 0;
        for (size_t i = 1; i < len; i++) on += s.mask.ids[i];
        if (on == 0) { dropped++; continue; } /* nothing left to learn after truncation */
        if (len > m8cap) {
            m8cap = len;
            m8 = realloc(m8, m8cap);
            u16 = realloc(u16, m8cap * 2);
        }
        for (size_t i = 0; i < len; i++) {
            m8[i] = (uint8_t)s.mask.ids[i];
            u16[i] = (uint16_t)s.ids.ids[i];
        }
        if (data_mmidx_writer_add(w, dtype == 4 ? (void *)s.ids.ids : (void *)u16, (int64_t)len) ||
            data_mmidx_writer_add(wm, m8, (int64_t)len)) {
            fprintf(stderr, "dsv3-prep sft: %s: write failed\n", o->output);
            rc = 1;
            break;
        }
        samples++;
        tokens += (int64_t)len;
        trained += on;
    }
    fclose(in);
    free(line); free(m8); free(u16);
    if (!rc && samples == 0) { fprintf(stderr, "dsv3-prep sft: no samples in %s\n", o->inputs[0]); rc = 1; }
    if (rc) { /* stopped: nothing half-written, an older dataset stays intact */
        data_mmidx_writer_abort(w);
        data_mmidx_writer_abort(wm);
    } else {
        int e1 = data_mmidx_writer_close(w, err, sizeof err);
        if (e1) fprintf(stderr, "dsv3-prep: %s\n", err);
        int e2 = data_mmidx_writer_close(wm, err, sizeof err);
        if (e2) fprintf(stderr, "dsv3-prep: %s\n", err);
        if (e1 || e2) rc = 1;
    }
    fprintf(stderr,
            "dsv3-prep sft: %ld samples, %lld tokens (%lld trained), %ld truncated to %d tokens, %ld dropped "
            "(no assistant token left), %ld malformed line(s)%s, %.2f s -> %s.bin/.idx + .mask.bin/.idx\n",
            samples, (long long)tokens, (long long)trained, truncated, o->max_len, dropped, bad,
            bad && o->skip_errors ? " skipped" : "", tool_now() - t0, o->output);
    chat_close(&s);
    return rc;
}

int main(int argc, char **argv) {
    opts o;
    if (argc < 2 || parse_args(argc, argv, &o)) { usage(stderr); return 2; }
    if (strcmp(o.cmd, "encode") && strcmp(o.cmd, "decode") && strcmp(o.cmd, "pretrain") && strcmp(o.cmd, "sft")) {
        fprintf(stderr, "dsv3-prep: unknown subcommand %s\n", o.cmd);
        usage(stderr);
        return 2;
    }
    char err[1024];
    tok_tokenizer *t = NULL;
    if (!o.bytes && tok_load(&t, o.tokenizer, err, sizeof err)) { fprintf(stderr, "dsv3-prep: %s\n", err); return 1; }
    int rc;
    if (!strcmp(o.cmd, "encode")) rc = cmd_encode(&o, t, false);
    else if (!strcmp(o.cmd, "decode")) rc = cmd_encode(&o, t, true);
    else if (!strcmp(o.cmd, "pretrain")) rc = cmd_pretrain(&o, t);
    else rc = cmd_sft(&o, t);
    tok_free(t);
    free(o.inputs);
    return rc;
}
