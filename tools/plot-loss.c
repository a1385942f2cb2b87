/* plot-loss — one or more metrics.csv files to a PNG, through gnuplot.
 *
 *   bin/plot-loss [-o out.png] [-c col[,col...]] [-t title] [-x from] [--logy] [-n]
 *                 [-H [col:]label=value ...] [-k key_position] [label=]metrics.csv ...
 *
 * Plots each column (default "loss") against "step" for every file; a file's
 * legend is its label (default: the file's directory name). The first file is
 * drawn as a line, the others as lines with points, so a run over a golden
 * curve reads well. Columns with values only at some steps (val_loss) are drawn
 * through the steps that have one. -H draws a dashed horizontal reference line
 * (a baseline: the model before fine-tuning) in the panel of `col`, or in every
 * panel without `col:`. -k places the legend (gnuplot words: "center right",
 * "bottom left", "outside", ...; default "top right"). Writes the gnuplot script next to the PNG (<out>.gp) and
 * runs gnuplot on it; -n writes the script only. Exit 0, or 1 with a message. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

enum { MAXF = 16, MAXC = 8, MAXH = 8 };

static int usage(void) {
    fprintf(stderr, "usage: plot-loss [-o out.png] [-c col[,col...]] [-t title] [-x from_step] [--logy] [-n] "
                    "[-H [col:]label=value ...] [-k key_position] [label=]metrics.csv ...\n");
    return 1;
}

/* 1-based index of `col` in the csv header of `path`; 0 if absent, -1 if unreadable. */
static int column_index(const char *path, const char *col, int *has_rows) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char line[8192];
    int idx = 0;
    *has_rows = 0;
    if (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = 0;
        int k = 1;
        for (char *save = NULL, *t = strtok_r(line, ",", &save); t; t = strtok_r(NULL, ",", &save), k++)
            if (!strcmp(t, col)) idx = k;
        char row[8192];
        *has_rows = fgets(row, sizeof row, f) != NULL;
    }
    fclose(f);
    return idx;
}

/* gnuplot single-quoted string: double any quote. */
static void gq(FILE *o, const char *s) {
    fputc('\'', o);
    for (; *s; s++) {
        if (*s == '\'') fputc('\'', o);
        fputc(*s, o);
    }
    fputc('\'', o);
}

int main(int argc, char **argv) {
    const char *out = "loss.png", *title = "", *cols_arg = "loss", *key = "top right";
    int logy = 0, script_only = 0;
    long from = 0;
    const char *file[MAXF], *label[MAXF];
    char labbuf[MAXF][256];
    int nf = 0;
    struct { char col[64], label[256]; double y; } hl[MAXH]; /* -H reference lines */
    int nh = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-o") && i + 1 < argc) out = argv[++i];
        else if (!strcmp(a, "-t") && i + 1 < argc) title = argv[++i];
        else if (!strcmp(a, "-c") && i + 1 < argc) cols_arg = argv[++i];
        else if (!strcmp(a, "-x") && i + 1 < argc) from = atol(argv[++i]);
        else if (!strcmp(a, "--logy")) logy = 1;
        else if (!strcmp(a, "-n")) script_only = 1;
        else if (!strcmp(a, "-k") && i + 1 < argc) {
            key = argv[++i];
            if (!*key || strspn(key, "abcdefghijklmnopqrstuvwxyz ") != strlen(key)) {
                fprintf(stderr, "plot-loss: -k %s: expected gnuplot key position words (e.g. \"center right\")\n", key);
                return 1;
            }
        }
        else if (!strcmp(a, "-H") && i + 1 < argc) {
            const char *v = argv[++i], *eq = strrchr(v, '='), *colon = strchr(v, ':');
            char *end = NULL;
            if (nh == MAXH) {
                fprintf(stderr, "plot-loss: at most %d -H lines\n", MAXH);
                return 1;
            }
            if (colon && eq && colon > eq) colon = NULL;
            double y = eq ? strtod(eq + 1, &end) : 0;
            if (!eq || eq == v || end == eq + 1 || *end) {
                fprintf(stderr, "plot-loss: -H %s: expected [col:]label=value with a number as value\n", v);
                return 1;
            }
            const char *lab = colon ? colon + 1 : v;
            snprintf(hl[nh].col, sizeof hl[nh].col, "%.*s", colon ? (int)(colon - v) : 0, v);
            snprintf(hl[nh].label, sizeof hl[nh].label, "%.*s", (int)(eq - lab), lab);
            hl[nh].y = y;
            nh++;
        }
        else if (!strcmp(a, "-h") || !strcmp(a, "--help")) return usage() - 1;
        else if (a[0] == '-') return usage();
        else {
            if (nf == MAXF) {
                fprintf(stderr, "plot-loss: at most %d files\n", MAXF);
                return 1;
            }
            const char *eq = strchr(a, '=');
            if (eq && eq != a) {
                snprintf(labbuf[nf], sizeof labbuf[nf], "%.*s", (int)(eq - a), a);
                file[nf] = eq + 1;
            } else { /* label = directory of the file, or the file name */
                file[nf] = a;
                snprintf(labbuf[nf], sizeof labbuf[nf], "%s", a);
                char *sl = strrchr(labbuf[nf], '/');
                if (sl && sl != labbuf[nf]) {
                    *sl = 0;
                    char *p = strrchr(labbuf[nf], '/');
                    if (p) memmove(labbuf[nf], p + 1, strlen(p));
                }
            }
            label[nf] = labbuf[nf];
            nf++;
        }
    }
    if (nf == 0) return usage();
    char colbuf[512];
    snprintf(colbuf, sizeof colbuf, "%s", cols_arg);
    const char *cols[MAXC];
    int nc = 0;
    for (char *save = NULL, *t = strtok_r(colbuf, ",", &save); t && nc < MAXC; t = strtok_r(NULL, ",", &save))
        cols[nc++] = t;
    for (int h = 0; h < nh; h++) {
        int found = !hl[h].col[0];
        for (int c = 0; c < nc; c++) found |= !strcmp(hl[h].col, cols[c]);
        if (!found) {
            fprintf(stderr, "plot-loss: -H %s:...: \"%s\" is not one of the plotted columns (-c)\n", hl[h].col, hl[h].col);
            return 1;
        }
    }
    int ci[MAXF][MAXC], si[MAXF];
    for (int f = 0; f < nf; f++) {
        int rows = 0;
        si[f] = column_index(file[f], "step", &rows);
        if (si[f] < 0) {
            fprintf(stderr, "plot-loss: cannot read %s: %s\n", file[f], strerror(errno));
            return 1;
        }
        if (si[f] == 0) {
            fprintf(stderr, "plot-loss: %s: no \"step\" column in the header (not a metrics.csv?)\n", file[f]);
            return 1;
        }
        if (!rows) fprintf(stderr, "plot-loss: warning: %s has no rows\n", file[f]);
        for (int c = 0; c < nc; c++) {
            ci[f][c] = column_index(file[f], cols[c], &rows);
            if (ci[f][c] <= 0) {
                fprintf(stderr, "plot-loss: %s: no column \"%s\"\n", file[f], cols[c]);
                return 1;
            }
        }
    }
    char gp[4200];
    snprintf(gp, sizeof gp, "%s.gp", out);
    FILE *o = fopen(gp, "w");
    if (!o) {
        fprintf(stderr, "plot-loss: cannot write %s: %s\n", gp, strerror(errno));
        return 1;
    }
    fprintf(o, "# written by plot-loss; run: gnuplot %s\n", gp);
    fprintf(o, "set terminal pngcairo size 1000,%d noenhanced font ',10'\nset output ", 320 + 280 * nc);
    gq(o, out);
    fprintf(o, "\nset datafile separator ','\nset datafile missing ''\nset key %s\nset grid\n", key);
    if (logy) fprintf(o, "set logscale y\n");
    if (from > 0) fprintf(o, "set xrange [%ld:*]\n", from);
    if (nc > 1) fprintf(o, "set multiplot layout %d,1\n", nc);
    for (int c = 0; c < nc; c++) {
        fprintf(o, "set title ");
        if (title[0]) {
            char t[600];
            snprintf(t, sizeof t, "%s: %s", title, cols[c]);
            gq(o, t);
        } else
            gq(o, cols[c]);
        fprintf(o, "\nset xlabel 'step'\nset ylabel ");
        gq(o, cols[c]);
        fprintf(o, "\nplot ");
        for (int f = 0; f < nf; f++) {
            if (f) fprintf(o, ", \\\n     ");
            gq(o, file[f]);
            fprintf(o, " every ::1 using %d:%d with %s lw %d title ", si[f], ci[f][c], f ? "linespoints pt 7 ps 0.6" : "lines",
                    f ? 1 : 3);
            gq(o, label[f]);
        }
        for (int h = 0; h < nh; h++) {
            if (hl[h].col[0] && strcmp(hl[h].col, cols[c])) continue;
            fprintf(o, ", \\\n     %.9g with lines dt 2 lw 2 lc 'black' title ", hl[h].y);
            gq(o, hl[h].label);
        }
        fprintf(o, "\n");
    }
    if (nc > 1) fprintf(o, "unset multiplot\n");
    fclose(o);
    if (script_only) {
        printf("%s\n", gp);
        return 0;
    }
    char cmd[9000], q[8600];
    /* single-quote the script path for the shell */
    size_t k = 0;
    q[k++] = '\'';
    for (const char *s = gp; *s && k < sizeof q - 6; s++) {
        if (*s == '\'') {
            memcpy(q + k, "'\\''", 4);
            k += 4;
        } else
            q[k++] = *s;
    }
    q[k++] = '\'';
    q[k] = 0;
    snprintf(cmd, sizeof cmd, "gnuplot %s", q);
    int rc = system(cmd);
    if (rc == -1 || !WIFEXITED(rc) || WEXITSTATUS(rc) != 0) {
        fprintf(stderr, "plot-loss: gnuplot failed on %s (is gnuplot-nox installed?)\n", gp);
        return 1;
    }
    printf("%s\n", out);
    return 0;
}
