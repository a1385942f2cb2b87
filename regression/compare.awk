# compare.awk — a run's metrics.csv against a golden one, numdiff-style.
#   awk -v tier=exact|tolerance -v tol="col:abs:rel ..." -v outliers=N -v factor=F \
#       -v from=S -v detail=FILE [-v refname=ref] -f compare.awk golden.csv run.csv
# (the first file is the reference: a committed golden in the tolerance tier,
# the reference run of this session in the exact tier; refname names it in
# the detail lines, "golden" by default)
# Compared: every golden column except wall-clock ones (tok_per_s, t_*); rows
# with step >= from (golden and run must hold the same steps).
#   exact:     the csv text must be identical (bitwise: same printed digits).
#   tolerance: a value passes if |d| <= abs or |d| <= rel*|golden| (numdiff's
#              default: either bound). A row with a failing value is an outlier;
#              up to `outliers` rows may be outliers, provided no value is off
#              by more than factor x its tolerance. "*" in tol sets the default.
# Prints: compared_steps loss_max_abs loss_max_rel worst_column@step worst/tol bad_rows verdict
# (worst = the value using the largest fraction of its tolerance; in the exact
# tier, the largest relative difference, and worst/tol is "-")
# and writes one line per offending value to `detail`.
BEGIN { FS = ","; nbad = 0; hard = 0; maxabs = 0; maxrel = 0; worst = "-"; ncmp = 0; wr = 0; wratio = 0
        if (factor == "") factor = 100; if (outliers == "") outliers = 0; if (from == "") from = 1
        if (detail == "") detail = "/dev/stderr"; if (refname == "") refname = "golden"
        n = split(tol, t, " ")
        for (i = 1; i <= n; i++) { split(t[i], p, ":"); tabs[p[1]] = p[2] + 0; trel[p[1]] = p[3] + 0 } }
function skip(c) { return c == "tok_per_s" || c ~ /^t_/ || c == "" }
function abs(x) { return x < 0 ? -x : x }
function note(s) { print s > detail }
FNR == 1 { sub(/\r$/, ""); file++; ncol[file] = NF; for (i = 1; i <= NF; i++) { name[file, i] = $i; has[file, $i] = 1 }
           if (file == 2) for (i = 2; i <= ncol[1]; i++) if (!skip(name[1, i]) && !has[2, name[1, i]]) {
               note("column " name[1, i] ": missing in the run"); hard = 1 }
           next }
{ sub(/\r$/, "") }
file == 1 { if ($1 < from) next; gstep[$1] = 1; for (i = 2; i <= NF; i++) g[$1, name[1, i]] = $i; next }
file == 2 {
    s = $1; if (s < from) next
    if (!(s in gstep)) { note("step " s ": not in the " refname); hard = 1; next }
    seen[s] = 1; ncmp++; rowbad = 0
    for (i = 2; i <= NF; i++) {
        c = name[2, i]; if (skip(c)) continue
        if (!((s, c) in g)) { if (!(c in newcol)) note("column " c ": not in the " refname ", not compared"); newcol[c] = 1; continue }
        gv = g[s, c]; rv = $i
        if (gv == "" || rv == "") {
            if (gv != rv) { note("step " s " " c ": " refname " \"" gv "\" run \"" rv "\""); hard = 1 }
            continue
        }
        d = abs(rv - gv); r = gv != 0 ? d / abs(gv) : (d > 0 ? 1e300 : 0)
        if (c == "loss" && d > maxabs) maxabs = d
        if (c == "loss" && r > maxrel) maxrel = r
        if (tier == "exact") {
            if (r > wr) { wr = r; worst = c "@" s }
            if ((rv "") != (gv "")) { note("step " s " " c ": " refname " " gv " run " rv " (exact tier: text differs)"); rowbad = 1; hard = 1 }
            continue
        }
        a = (c in tabs) ? tabs[c] : tabs["*"]; rl = (c in trel) ? trel[c] : trel["*"]
        bound = a > rl * abs(gv) ? a : rl * abs(gv)
        q = bound > 0 ? d / bound : (d > 0 ? 1e300 : 0)
        if (q > wratio) { wratio = q; worst = c "@" s }
        if (d > bound) {
            rowbad = 1
            note(sprintf("step %s %s: " refname " %s run %s |d| %.3g rel %.3g > tol (abs %g rel %g)", s, c, gv, rv, d, r, a, rl))
            if (d > factor * bound) hard = 1
        }
    }
    nbad += rowbad
}
END {
    for (s in gstep) if (!(s in seen)) { note("step " s ": missing in the run"); hard = 1 }
    if (ncmp == 0) { note("no rows compared"); hard = 1 }
    v = (hard || nbad > outliers) ? "FAIL" : "PASS"
    printf "%d %.3g %.3g %s %s %d %s\n", ncmp, maxabs, maxrel, worst, tier == "exact" ? "-" : sprintf("%.3g", wratio), nbad, v
}
