#!/usr/bin/python3
"""compare.py -- check an engine's logits against the NumPy reference (v4ref.py).

    /usr/bin/python3 tests/reference/compare.py --engine BIN --model DIR \\
        --prompt-ids 5,17,42 -n 8 [--tol-abs 1e-4] [--tol-cos 1e-6] [--mtp] \\
        [--engine-args "..."] [--keep DIR] [--no-stability]

1. Runs the engine greedily:
       BIN -m DIR --prompt-ids IDS -n N --temperature 0 --logits-out F1 [--mtp-out F2]
   It must print the generated ids comma-separated on a stdout line and write n rows of
   vocab_size little-endian float32 logits (row i = the logits generated token i was chosen
   from; with --mtp also P+n-1 MTP rows, row t = MTP logits from the main model's streams at
   position t and token t+1).
2. Runs the reference with the engine's tokens forced (teacher forcing), so every step
   compares logits of the same token history.
3. One check per step (and per MTP row with --mtp):
       max|engine - ref| <= tol_abs * max(1, max|ref|)      (default tol_abs 1e-4)
       cosine(engine, ref) >= 1 - tol_cos                   (default tol_cos 1e-6)
       engine token == argmax(ref), or ref[argmax] - ref[engine token] <= the abs limit
   Why these defaults: a float32 engine and this float32 reference differ only by summation
   order; measured reference-float32 vs reference-float64 differences on the tiny presets
   are 1e-6..7e-6 for logits of magnitude ~3-4, so 1e-4 relative to the largest logit leaves
   a >40x margin, while spec slips (no YaRN, transposed mHC mixing, no KV FP8 rounding)
   move logits by 0.1..1; subtler ones (hc_eps dropped, Sinkhorn ending on a row pass) by
   1e-3..0.4 on some presets and below the limit on others -- test all three presets.
   The cosine check is a coarse second opinion (1e-6 ~ relative error norm 1.4e-3).
4. Discrete decisions (FP8/FP4 rounding, MoE / indexer top-k) turn float noise into
   whole-quantum flips that cascade into 1e-3..1e-1 logit changes, and which decisions lie
   within float noise of a tie depends on the machine (the BLAS numpy uses, the engine's
   kernels).  When rows fail, the script re-runs the reference in float64 and --stab-runs
   times in float32 with ~1e-7 relative noise injected after every linear layer (fixed
   seeds; imitating other summation orders).  A failing row is
     FAIL      where every re-run stays within the limit of the plain reference (stable);
     TIE       where they do not and the engine passes the checks against one of them;
     EXCLUDED  otherwise (counted; more than --max-excluded of the rows fails the run).
   So the verdict does not depend on which correct float implementation broke a near-tie,
   while a real slip (stable rows failing) still fails; tests/scripts/test_reference plants
   three (--plant) to show it.

Reference-only mode (no engine): `--stability-only` prints, per step, how far the perturbed
reference runs move, to choose prompts for tests (exit 0 when every step is stable).

Exit status: 0 passed (no FAIL row, excluded rows within --max-excluded); 1 failed; 2 usage
error or the engine failed; with --stability-only 3 when some row is unstable.
Prints a closing line `compare: P passed, F failed`.
"""

import argparse
import os
import shlex
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import v4ref  # noqa: E402


def die(msg):
    print(f"compare: error: {msg}", file=sys.stderr)
    print("compare: 0 passed, 1 failed")
    sys.exit(2)


def parse_ids_line(stdout):
    """Last stdout line that is a comma-separated list of integers."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if not line:
            continue
        try:
            return [int(x) for x in line.split(",") if x.strip() != ""]
        except ValueError:
            continue
    return None


def read_rows(path, rows, vocab, what):
    if not os.path.exists(path):
        die(f"engine wrote no {what} file {path}")
    a = np.fromfile(path, dtype="<f4")
    if a.size != rows * vocab:
        die(f"{what} file {path}: {a.size} floats, expected {rows} x {vocab} = {rows * vocab}")
    return a.reshape(rows, vocab).astype(np.float64)


def check_rows(eng, ref, tol_abs, tol_cos, eng_tokens=None):
    """-> list of dicts, one per row."""
    out = []
    for i in range(len(ref)):
        e, r = eng[i], ref[i]
        lim = tol_abs * max(1.0, float(np.max(np.abs(r))))
        finite = bool(np.all(np.isfinite(e)))
        maxabs = float(np.max(np.abs(e - r))) if finite else float("inf")
        ne, nr = np.linalg.norm(e), np.linalg.norm(r)
        cos = float(e @ r / (ne * nr)) if finite and ne > 0 and nr > 0 else -1.0
        ra = int(np.argmax(r))
        tok = int(eng_tokens[i]) if eng_tokens is not None else int(np.argmax(e))
        gap = float(r[ra] - r[tok]) if 0 <= tok < len(r) else float("inf")
        reasons = []
        if not finite:
            reasons.append("non-finite logits")
        if maxabs > lim:
            reasons.append(f"maxabs {maxabs:.3g} > {lim:.3g}")
        if cos < 1.0 - tol_cos:
            reasons.append(f"1-cos {1 - cos:.3g} > {tol_cos:.3g}")
        if tok != ra and gap > lim:
            reasons.append(f"token {tok} != ref argmax {ra} (ref gap {gap:.3g})")
        out.append(dict(i=i, maxabs=maxabs, lim=lim, cos=cos, tok=tok, ref_tok=ra,
                        gap=gap, ok=not reasons, reasons=reasons))
    return out


def perturbed_runs(cfg, W, prompt, n, toks, want_mtp, runs, noise=1e-7):
    """The reference re-run as other correct float implementations would compute it:
    in float64, and `runs` times in float32 with `noise` relative noise after every linear
    layer (fixed seeds 1..runs).  -> [(name, logits [n, V], mtp rows or None)]"""
    out = []
    variants = [("float64", None)] + [(f"noise{s}", s) for s in range(1, runs + 1)]
    for name, seed in variants:
        v4ref.set_dtype(np.float64 if seed is None else np.float32)
        v4ref.NOISE = None if seed is None else (np.random.default_rng(seed), noise)
        try:
            _, L, M, _ = v4ref.generate(v4ref.Model(cfg, W), prompt, n, gen_ids=toks, want_mtp=want_mtp)
        finally:
            v4ref.NOISE = None
            v4ref.set_dtype(np.float32)
        out.append((name, L.astype(np.float64), M.astype(np.float64) if want_mtp else None))
    return out


def deviation(runs, base):
    """Per-row max deviation of the perturbed runs from the plain reference.
    base = {"step": [n, V], "mtp": rows or None} -> {kind: [rows]}"""
    dev = {}
    for kind, idx in (("step", 1), ("mtp", 2)):
        if base[kind] is None:
            dev[kind] = None
            continue
        dev[kind] = np.zeros(len(base[kind]))
        for r in runs:
            dev[kind] = np.maximum(dev[kind], np.max(np.abs(r[idx] - base[kind]), axis=1))
    return dev


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", help="engine CLI (a path, or a quoted command line)")
    ap.add_argument("--model", "-m", required=True, help="model directory")
    ap.add_argument("--prompt-ids", required=True)
    ap.add_argument("-n", type=int, default=8)
    ap.add_argument("--tol-abs", type=float, default=1e-4,
                    help="max-abs limit relative to max(1, max|ref logit|) (default 1e-4)")
    ap.add_argument("--tol-cos", type=float, default=1e-6, help="require cosine >= 1 - this (default 1e-6)")
    ap.add_argument("--mtp", action="store_true", help="also compare MTP logits (engine --mtp-out)")
    ap.add_argument("--engine-args", default="", help="extra arguments appended to the engine command")
    ap.add_argument("--keep", help="directory to keep the logits files in")
    ap.add_argument("--no-stability", action="store_true",
                    help="skip the perturbed re-runs that label failures at unstable steps")
    ap.add_argument("--stab-runs", type=int, default=3,
                    help="noisy float32 reference re-runs for the stability check (default 3)")
    ap.add_argument("--plant", choices=v4ref.PLANTS,
                    help="plant a bug in the reference (mutation check: the comparison must fail)")
    ap.add_argument("--max-excluded", type=float, default=0.05,
                    help="fraction of rows that may be excluded as reference-unstable (default 0.05)")
    ap.add_argument("--stability-only", action="store_true",
                    help="no engine: report whether the reference is stable on this prompt")
    ap.add_argument("--timeout", type=float, default=600.0, help="engine timeout in seconds")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every step, not only failures")
    a = ap.parse_args(argv)
    if not a.engine and not a.stability_only:
        ap.error("--engine is required (or use --stability-only)")

    v4ref.PLANT = a.plant
    prompt = v4ref.parse_ids(a.prompt_ids)
    if not prompt:
        die("empty --prompt-ids")
    if a.n < 1:
        die("-n must be >= 1")
    try:
        cfg = v4ref.load_config(a.model)
    except Exception as ex:  # noqa: BLE001
        die(f"cannot read config of {a.model}: {ex}")
    V = cfg.vocab_size

    if a.stability_only:
        W = v4ref.load_checkpoint(a.model)
        model = v4ref.Model(cfg, W)
        toks, ref, ref_mtp, _ = v4ref.generate(model, prompt, a.n, want_mtp=a.mtp)
        dev = deviation(perturbed_runs(cfg, W, prompt, a.n, toks, a.mtp, a.stab_runs),
                        {"step": ref.astype(np.float64),
                         "mtp": ref_mtp.astype(np.float64) if a.mtp else None})
        nbad = 0
        for kind, rows in (("step", ref), ("mtp", ref_mtp)):
            if rows is None:
                continue
            for i in range(len(rows)):
                lim = a.tol_abs * max(1.0, float(np.max(np.abs(rows[i]))))
                bad = dev[kind][i] > lim
                nbad += bad
                if bad or a.verbose:
                    print(f"{kind} {i:3d}: perturbed-reference deviation {dev[kind][i]:.3g} "
                          f"(lim {lim:.3g}) {'UNSTABLE' if bad else 'stable'}")
        print(f"compare: reference tokens {','.join(map(str, toks))}")
        print(f"compare: stability: {nbad} unstable row(s)")
        return 0 if nbad == 0 else 3

    work = a.keep or tempfile.mkdtemp(prefix="dsv4cmp.")
    os.makedirs(work, exist_ok=True)
    f_eng = os.path.join(work, "engine.logits")
    f_eng_mtp = os.path.join(work, "engine.mtp")
    for f in (f_eng, f_eng_mtp):
        if os.path.exists(f):
            os.unlink(f)

    # ---- 1. engine -------------------------------------------------------------------------
    cmd = shlex.split(a.engine) + ["-m", a.model, "--prompt-ids", ",".join(map(str, prompt)),
                                   "-n", str(a.n), "--temperature", "0", "--logits-out", f_eng]
    if a.mtp:
        cmd += ["--mtp-out", f_eng_mtp]
    cmd += shlex.split(a.engine_args)
    print("compare: engine: " + " ".join(shlex.quote(c) for c in cmd))
    try:
        pr = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
    except (OSError, subprocess.TimeoutExpired) as ex:
        die(f"engine did not run: {ex}")
    if pr.returncode != 0:
        sys.stderr.write(pr.stderr[-4000:])
        die(f"engine exited with status {pr.returncode}")
    toks = parse_ids_line(pr.stdout)
    if toks is None or len(toks) != a.n:
        sys.stderr.write(pr.stdout[-2000:])
        die(f"engine stdout has no line of {a.n} comma-separated token ids")
    eng = read_rows(f_eng, a.n, V, "logits")
    eng_mtp = read_rows(f_eng_mtp, len(prompt) + a.n - 1, V, "MTP logits") if a.mtp else None

    # ---- 2. reference, teacher-forced with the engine's tokens -----------------------------
    W = v4ref.load_checkpoint(a.model)
    v4ref.set_dtype(np.float32)
    model = v4ref.Model(cfg, W)
    if a.mtp and model.mtp is None:
        die("--mtp: the checkpoint has no MTP block")
    _, ref, ref_mtp, _ = v4ref.generate(model, prompt, a.n, gen_ids=toks, want_mtp=a.mtp)
    ref = ref.astype(np.float64)
    if a.keep:
        ref.astype("<f4").tofile(os.path.join(work, "ref.logits"))
        if a.mtp:
            ref_mtp.astype("<f4").tofile(os.path.join(work, "ref.mtp"))

    # ---- 3. checks ---------------------------------------------------------------------------
    checks = [("step", c) for c in check_rows(eng, ref, a.tol_abs, a.tol_cos, toks)]
    if a.mtp:
        checks += [("mtp", c) for c in
                   check_rows(eng_mtp, ref_mtp.astype(np.float64), a.tol_abs, a.tol_cos)]

    # ---- 4. a failing row where the reference itself is not stable ------------------------
    # The plain float32 reference is one of several correct float implementations; where a
    # discrete decision lies within float noise of a tie, they disagree among themselves, and
    # the engine may legitimately side with any of them.  So a failing row is
    #   FAIL      if every perturbed run stays within the limit of the plain one (the row is
    #             stable: nothing but a real difference explains the engine), else
    #   TIE       if the engine matches one of the perturbed runs (passes the same checks
    #             against it): the engine broke a near-tie the other way, else
    #   EXCLUDED  (the row cannot tell a bug from noise); more than --max-excluded of all
    #             rows excluded fails the comparison, since such a prompt tests too little.
    failed = [c for _, c in checks if not c["ok"]]
    diag_line = None
    if failed and not a.no_stability:
        runs = perturbed_runs(cfg, W, prompt, a.n, toks, a.mtp, a.stab_runs)
        dev = deviation(runs, {"step": ref, "mtp": ref_mtp.astype(np.float64) if a.mtp else None})
        rows_of = {"step": (eng, 1, toks), "mtp": (eng_mtp, 2, None)}
        for kind, c in checks:
            if c["ok"]:
                continue
            i = c["i"]
            c["ref_dev"] = float(dev[kind][i])
            c["verdict"] = "FAIL"
            if c["ref_dev"] > c["lim"]:
                e, idx, tk = rows_of[kind]
                c["verdict"] = "EXCLUDED"
                for name, *rows in runs:
                    alt = check_rows(e[i:i + 1], rows[idx - 1][i:i + 1], a.tol_abs, a.tol_cos,
                                     tk[i:i + 1] if tk is not None else None)[0]
                    if alt["ok"]:
                        c["verdict"], c["matched"] = "TIE", name
                        break
        # where are the reference's closest-to-tie decisions?
        v4ref.DIAG.enabled, v4ref.DIAG.records = True, []
        v4ref.generate(v4ref.Model(cfg, W), prompt, a.n, gen_ids=toks, want_mtp=a.mtp)
        diag_line = v4ref.DIAG.summary()
        v4ref.DIAG.enabled = False

    # ---- report ------------------------------------------------------------------------------
    count = {"ok": 0, "TIE": 0, "EXCLUDED": 0, "FAIL": 0}
    for kind, c in checks:
        tag = "ok" if c["ok"] else c.get("verdict", "FAIL")
        count[tag] += 1
        if a.verbose or not c["ok"]:
            extra = ""
            if "ref_dev" in c:
                extra = f"  perturbed-ref deviation {c['ref_dev']:.3g}"
            if "matched" in c:
                extra += f", matches the {c['matched']} run"
            tokinfo = f"tok {c['tok']} ref {c['ref_tok']}" if kind == "step" else \
                f"argmax {c['tok']} ref {c['ref_tok']}"
            print(f"{kind} {c['i']:3d}: {tokinfo}  maxabs {c['maxabs']:.3g} (lim {c['lim']:.3g})  "
                  f"1-cos {1 - c['cos']:.3g}  {tag}{extra}"
                  + ("  [" + "; ".join(c["reasons"]) + "]" if c["reasons"] else ""))
    worst = max(checks, key=lambda kc: kc[1]["maxabs"] / kc[1]["lim"])
    print(f"compare: worst {worst[0]} {worst[1]['i']}: maxabs {worst[1]['maxabs']:.3g} "
          f"(lim {worst[1]['lim']:.3g}), min cosine {min(c['cos'] for _, c in checks):.9f}")
    if diag_line:
        print("compare: " + diag_line)
    total = len(checks)
    max_excluded = int(a.max_excluded * total)
    print(f"compare: rows {total}: {count['ok']} within the limit, {count['TIE']} matching a "
          f"perturbed reference at a near-tie, {count['EXCLUDED']} excluded (reference unstable, "
          f"no run matches; at most {max_excluded} allowed), {count['FAIL']} failing at stable rows")
    too_many = count["EXCLUDED"] > max_excluded
    if too_many:
        print(f"compare: too many excluded rows: this prompt cannot discriminate a bug from noise")
    npass = count["ok"] + count["TIE"] + count["EXCLUDED"]
    nfail = count["FAIL"] + (1 if too_many else 0)
    print(f"compare: {npass} passed, {nfail} failed")
    return 0 if nfail == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
