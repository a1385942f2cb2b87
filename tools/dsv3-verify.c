/* dsv3-verify — the post-run check of a LoRA run's saved adapters.
 *
 *   dsv3-verify RUN_DIR
 *
 * For every RUN_DIR/checkpoints/step_*.h5 (full or adapters-only) and its PEFT
 * copy checkpoints/checkpoint-<step>/ (written at every save of a LoRA run):
 *   - the adapter keys are exactly those the run's deck gives (layers x targets
 *     x {A, B}; 610 for input/sft.cfg), with their shapes, F32, finite;
 *   - every lora_B is non-zero and every lora_A differs from its initial value
 *     (recomputed from the seed: counter-based init) once training has run;
 *   - the PEFT file holds the same keys (base_model.model.<name>), dtype F32,
 *     byte sizes and values bitwise equal to the HDF5 copy.
 * Writes RUN_DIR/adapter_debug_info.json (per checkpoint: step, keys, per-tensor
 * L2 norm and change since the previous save) and exits non-zero naming the
 * first bad tensor. jobscripts/sft-3x8.sbatch runs it after training.
 */
#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <mpi.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/ckpt.h"
#include "../src/deck.h"
#include "../src/model/params.h"
#include "../src/ops.h"
#include "../src/peft.h"
#include "../src/safetensors.h"
#include "../src/tool.h"


static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static double l2(const float *x, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)x[i] * x[i];
    return sqrt(s);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    tool_init("dsv3-verify", 0, 1); /* one process */
    if (argc != 2 || argv[1][0] == '-') tool_die("usage: dsv3-verify RUN_DIR");
    const char *run = argv[1];
    char dir[4200], path[4600], err[2048];
    snprintf(dir, sizeof dir, "%s/checkpoints", run);
    DIR *dp = opendir(dir);
    if (!dp) tool_die("%s: no checkpoints directory", dir);
    int64_t steps[4096];
    int ns = 0;
    struct dirent *e;
    while ((e = readdir(dp)) && ns < 4096) {
        long long s;
        char tail[8];
        if (sscanf(e->d_name, "step_%lld.h5%7s", &s, tail) == 1 && strlen(e->d_name) == 16) steps[ns++] = s;
    }
    closedir(dp);
    if (!ns) tool_die("%s: no step_*.h5 checkpoints", dir);
    qsort(steps, (size_t)ns, sizeof *steps, cmp_i64);

    json_t *report = json_object(), *cks = json_array();
    json_object_set_new(report, "run_dir", json_string(run));
    float **prev = NULL; /* the previous save's adapters, for the change since */
    int nprev = 0, bad = 0, total_keys = 0;
    for (int c = 0; c < ns; c++) {
        snprintf(path, sizeof path, "%s/step_%08lld.h5", dir, (long long)steps[c]);
        ckpt_in *in;
        if (ckpt_in_open(&in, path, err, sizeof err)) tool_die("%s", err);
        char *over[] = {"parallel.expert_parallel=1", "parallel.zero_stage=0"};
        deck d;
        if (!ckpt_in_deck(in) || deck_load_string(&d, ckpt_in_deck(in), path, 2, over, 1, err, sizeof err))
            tool_die("%s: its deck: %s", path, ckpt_in_deck(in) ? err : "missing");
        if (!d.lora.enabled) tool_die("%s: not a LoRA run (lora.enabled = false)", path);
        param_table pt;
        if (params_build(&pt, &d.model, &d.lora, 1, err, sizeof err)) tool_die("%s: %s", path, err);
        /* the expected adapter keys, and the file's */
        /* a routed expert's adapters are stacked [E, a, b] in HDF5 and E keys in PEFT */
        int want = 0, got = 0, want_h5 = 0;
        for (int i = 0; i < pt.n; i++)
            if (pt.t[i].flags & P_LORA) want += pt.t[i].ndim == 3 ? (int)pt.t[i].shape[0] : 1, want_h5++;
        for (int i = 0; i < ckpt_in_count(in); i++) got += ckpt_in_tensor(in, i)->is_lora;
        if (got != want_h5) tool_die("%s: %d adapter tensors, the deck's model has %d", path, got, want_h5);
        snprintf(path, sizeof path, "%s/checkpoint-%lld/adapter_model.safetensors", dir, (long long)steps[c]);
        st_file pf;
        int have_peft = st_open(&pf, path, err, sizeof err) == 0;
        if (!have_peft) tool_die("%s", err);
        if (pf.n != want) tool_die("%s: %d tensors, the deck's model has %d adapters", path, pf.n, want);
        json_t *ck = json_object(), *tens = json_object();
        json_object_set_new(ck, "step", json_integer(steps[c]));
        json_object_set_new(ck, "keys", json_integer(want));
        if (!prev) prev = calloc((size_t)want, sizeof *prev), nprev = want;
        int k = 0;
        for (int i = 0; i < pt.n; i++) {
            const param_spec *t = &pt.t[i];
            if (!(t->flags & P_LORA)) continue;
            int j = -1;
            for (int q = 0; q < ckpt_in_count(in); q++)
                if (ckpt_in_tensor(in, q)->is_lora && !strcmp(ckpt_in_tensor(in, q)->name, t->name)) j = q;
            const char *hfile = path; /* for messages */
            (void)hfile;
            if (j < 0) tool_die("step %lld: adapter %s is missing from the HDF5 checkpoint", (long long)steps[c], t->name);
            const ckpt_tensor_info *ci = ckpt_in_tensor(in, j);
            int stacked = t->ndim == 3;
            if (ci->ndim != t->ndim || ci->shape[0] != t->shape[0] || ci->shape[1] != t->shape[1] ||
                (stacked && ci->shape[2] != t->shape[2]))
                tool_die("step %lld: %s has shape [%lld,%lld%s], the deck gives [%lld,%lld%s]", (long long)steps[c], t->name,
                    (long long)ci->shape[0], (long long)ci->shape[1], stacked ? ",..." : "", (long long)t->shape[0],
                    (long long)t->shape[1], stacked ? ",..." : "");
            int64_t rows = stacked ? t->shape[1] : t->shape[0], cols = stacked ? t->shape[2] : t->shape[1];
            for (int64_t e = 0; e < (stacked ? t->shape[0] : 1); e++) { /* each expert's adapter on its own */
                char key[600], unit[600];
                peft_name(key, sizeof key, t->name, stacked ? e : -1);
                snprintf(unit, sizeof unit, "%s", key + 17); /* without "base_model.model." */
                size_t n = (size_t)(rows * cols);
                float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
                if (!x || !y) tool_die("out of memory (%zu floats)", n);
                if (ckpt_in_read(in, j, stacked ? e : 0, stacked ? 1 : t->shape[0], x, 0, err, sizeof err))
                    tool_die("%s", err);
                for (size_t q = 0; q < n; q++)
                    if (!isfinite(x[q])) tool_die("step %lld: %s[%zu] is not finite", (long long)steps[c], unit, q);
                size_t len = strlen(t->name);
                int is_b = len > 14 && !strcmp(t->name + len - 14, ".lora_B.weight");
                if (steps[c] > 0) {
                    if (is_b && l2(x, n) == 0)
                        tool_die("step %lld: %s is all zero (the adapter never trained%s)", (long long)steps[c], unit,
                            stacked ? ": was no token routed to this expert?" : "");
                    if (!is_b) { /* lora_A's initial value: U(+-1/sqrt(in)) from (seed, name, element) */
                        ops_fill_uniform(y, n, (uint64_t)d.run.seed, params_name_key(t->name), (uint64_t)e * n,
                                         1.0f / sqrtf((float)cols));
                        if (!memcmp(x, y, n * sizeof *x))
                            tool_die("step %lld: %s still equals its initial value", (long long)steps[c], unit);
                    }
                }
                /* the PEFT copy: same key, F32, same bytes */
                int pi = st_find(&pf, key);
                if (pi < 0) tool_die("step %lld: %s has no %s", (long long)steps[c], path, key);
                const st_tensor *st = &pf.t[pi];
                if (st->dtype != ST_F32 || st->ndim != 2 || st->shape[0] != rows || st->shape[1] != cols ||
                    st_bytes(st) != n * 4)
                    tool_die("step %lld: %s: %s is %s [%lld,%lld], %llu bytes; want F32 [%lld,%lld], %zu bytes",
                             (long long)steps[c], path, key, st_dtype_name(st->dtype), (long long)st->shape[0],
                             (long long)(st->ndim > 1 ? st->shape[1] : 0),
                             (unsigned long long)st_bytes(st), (long long)rows, (long long)cols, n * 4);
                if (st_read(&pf, pi, 0, n * 4, y, err, sizeof err)) tool_die("%s", err);
                if (memcmp(x, y, n * 4))
                    tool_die("step %lld: %s differs from the HDF5 checkpoint's %s", (long long)steps[c], key, unit);
                json_t *o = json_object();
                json_object_set_new(o, "norm", json_real(l2(x, n)));
                if (prev[k]) {
                    for (size_t q = 0; q < n; q++) y[q] = x[q] - prev[k][q];
                    json_object_set_new(o, "change_since_previous", json_real(l2(y, n)));
                } else {
                    json_object_set_new(o, "change_since_previous", json_null());
                }
                json_object_set_new(tens, unit, o);
                free(prev[k]);
                prev[k] = x;
                free(y);
                k++;
            }
        }
        json_object_set_new(ck, "tensors", tens);
        json_array_append_new(cks, ck);
        total_keys = want;
        printf("dsv3-verify: step %lld: %d adapters, shapes, F32, finite, trained%s, PEFT copy bitwise equal\n",
               (long long)steps[c], want, steps[c] > 0 ? " (every lora_B non-zero, every lora_A moved)" : "");
        st_close(&pf);
        params_free(&pt);
        deck_free(&d);
        ckpt_in_close(in);
    }
    json_object_set_new(report, "checkpoints", cks);
    snprintf(path, sizeof path, "%s/adapter_debug_info.json", run);
    if (json_dump_file(report, path, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(9))) tool_die("cannot write %s", path);
    json_decref(report);
    for (int k = 0; k < nprev; k++) free(prev[k]);
    free(prev);
    printf("dsv3-verify: %s: %d checkpoints, %d adapter keys each: OK (%s)\n", run, ns, total_keys, path);
    (void)bad;
    MPI_Finalize();
    return 0;
}
