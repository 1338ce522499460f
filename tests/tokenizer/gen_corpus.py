#!/usr/bin/python3
"""Generates the tokenizer comparison corpus: one JSON string per line.

    gen_corpus.py --n 20000 --seed 1 --out corpus.jsonl
                  [--classes-c c.txt --classes-js js.txt] [--tokenizer tokenizer.json]

Deterministic for a given seed.  Every category the issue names is drawn in
turn: ASCII prose and code, CJK, Japanese kana, Arabic, emoji and ZWJ
sequences, combining marks, digit runs of every length, whitespace runs with
\\r\\n and tabs, punctuation clusters, text around the tokenizer's added
tokens (whole, cut, glued, repeated), random valid UTF-8 from every plane,
and mixtures of all of these.

--classes-c / --classes-js are the outputs of unicode_classes.c (PCRE2) and
unicode_classes.mjs (the reference's JavaScript engine).  Code points whose
classes differ between the two Unicode databases (characters added after the
older one's version) are removed from every string, and their count is
printed: on those the two engines cannot agree by construction, and which
Unicode version is "right" is not the tokenizer's call.
"""
import argparse
import json
import random
import sys

WORDS = ("the of and to in is you that it he was for on are as with his they at be this "
         "have from or one had by word but not what all were we when your can said there use "
         "an each which she do how their if will up other about out many then them these so "
         "some her would make like him into time has look two more write go see number no way "
         "could people my than first water been call who oil its now find long down day did "
         "get come made may part tokenizer model inference latency throughput nginx kernel "
         "don't I'm we've they're it's you'll she'd O'Neil naïve café résumé coöperate "
         "HTTP/1.1 JSON UTF-8 x86_64 e.g. i.e. etc. Mr. Dr. U.S.A.").split()

CODE = [
    "int main(int argc, char **argv) {\n\treturn 0;\n}\n",
    "def f(x):\n    return [i * 2 for i in range(x) if i % 3 == 0]\n",
    "for (size_t i = 0; i < n; i++) { sum += a[i] * b[i]; }",
    "const re = /\\p{L}+/gu; // unicode\nconsole.log(`${a}+${b}=${a + b}`);",
    "#include <stdio.h>\r\n#define MAX(a, b) ((a) > (b) ? (a) : (b))\r\n",
    "SELECT id, name FROM users WHERE age >= 18 AND name LIKE '%a%';",
    "if x != nil {\n\t\treturn fmt.Errorf(\"bad: %w\", err)\n\t}",
    "    let v: Vec<u32> = (0..10).map(|x| x << 2).collect::<Vec<_>>();",
    "<div class=\"a\"><span id='b'>&amp;&lt;&gt;</span></div>",
    "{\"key\": [1, 2.5e-3, true, null], \"nested\": {\"a\": \"\\u00e9\"}}",
    "x=1;y=2;z=x+y*3-4/5%6^7&8|9~10",
    "    \t  mixed_indent = True  \n\n\n",
    "$ ls -la | grep -v '^d' | awk '{print $9}' > out.txt 2>&1",
    "a->b->c.d[0]::e::<f>()?.g ?? h || i && !j",
]

CJK_PUNCT = "，。！？、；：“”‘’（）《》【】…—～·「」『』"
KANA_EXTRA = "ー・ヽヾゝゞ々〆"
ARABIC_DIGITS = "٠١٢٣٤٥٦٧٨٩"
EMOJI_BASE = [0x1F600, 0x1F64F, 0x1F300, 0x1F5FF, 0x1F680, 0x1F6FF, 0x2600, 0x26FF, 0x1F900, 0x1F9FF]
ZWJ_SEQS = ["👨\u200d👩\u200d👧\u200d👦", "👩\u200d💻", "🏳️\u200d🌈", "👁️\u200d🗨️", "🧑🏽\u200d🚀",
            "❤️\u200d🔥", "🐻\u200d❄️", "👨🏿\u200d🦰", "1️⃣", "#️⃣", "🇨🇳", "🇺🇸🇯🇵", "✌🏻", "☺️"]
WHITESPACE = [" ", "  ", "\t", "\n", "\r\n", "\r", "\n\n", " \n", "\t\t", "\u00a0", "\u3000",
              "\u2028", "\u2029", "\u0085", "\u000b", "\u000c", "\ufeff", "\u200b", "\u2003", "\u202f"]
PUNCT = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") + ["«", "»", "¿", "¡", "§", "¶", "†", "‡",
         "•", "‰", "′", "″", "‹", "›", "€", "£", "¥", "©", "®", "™", "°", "±", "×", "÷", "→",
         "⇒", "∀", "∑", "√", "∞", "≠", "≤", "♥", "★"] + list(CJK_PUNCT)
DIGITS = ["0123456789", ARABIC_DIGITS, "０１２３４５６７８９", "०१२३४५६७८९", "²³¹¼½¾", "ⅠⅡⅢⅣⅫ", "①②③"]
COMBINING = list(range(0x0300, 0x0370)) + [0x20DD, 0x20E3, 0x0E31, 0x0E47, 0x093F, 0x094D, 0x05B4]


def rand_word(r):
    return r.choice(WORDS)


def prose(r):
    out = []
    for _ in range(r.randint(1, 30)):
        w = rand_word(r)
        if r.random() < 0.1:
            w = w.capitalize()
        if r.random() < 0.05:
            w = w.upper()
        out.append(w)
        if r.random() < 0.15:
            out[-1] += r.choice([",", ".", ";", ":", "!", "?", "...", "'s", ")"])
    s = " ".join(out)
    if r.random() < 0.3:
        s += r.choice(["\n", "\n\n", " ", "  "])
    return s


def code(r):
    return "".join(r.choice(CODE) for _ in range(r.randint(1, 3)))


def cjk(r):
    out = []
    for _ in range(r.randint(1, 60)):
        x = r.random()
        if x < 0.75:
            out.append(chr(r.randint(0x4E00, 0x9FA5)))
        elif x < 0.85:
            out.append(chr(r.randint(0x9FA6, 0x9FFF)) if r.random() < 0.2 else chr(r.randint(0x3400, 0x4DBF)))
        elif x < 0.95:
            out.append(r.choice(CJK_PUNCT))
        else:
            out.append(r.choice([" ", "abc", "123", "\n", "Ｄｅｅｐ", "AI"]))
    return "".join(out)


def kana(r):
    out = []
    for _ in range(r.randint(1, 50)):
        x = r.random()
        if x < 0.4:
            out.append(chr(r.randint(0x3041, 0x309F)))
        elif x < 0.75:
            out.append(chr(r.randint(0x30A0, 0x30FF)))
        elif x < 0.85:
            out.append(chr(r.randint(0x4E00, 0x9FA5)))
        elif x < 0.92:
            out.append(r.choice(KANA_EXTRA + "。、「」"))
        else:
            out.append(chr(r.randint(0xFF66, 0xFF9F)))   # half-width katakana
    return "".join(out)


def arabic(r):
    out = []
    for _ in range(r.randint(1, 12)):
        w = "".join(chr(r.randint(0x0621, 0x064A)) for _ in range(r.randint(1, 8)))
        if r.random() < 0.4:
            w = "".join(c + (chr(r.randint(0x064B, 0x0652)) if r.random() < 0.5 else "") for c in w)
        if r.random() < 0.1:
            w += "".join(r.choice(ARABIC_DIGITS) for _ in range(r.randint(1, 5)))
        out.append(w)
    return r.choice([" ", "، ", "؛ "]).join(out) + r.choice(["", "؟", ".", "\n"])


def emoji(r):
    out = []
    for _ in range(r.randint(1, 15)):
        x = r.random()
        if x < 0.35:
            i = r.randrange(0, len(EMOJI_BASE), 2)
            out.append(chr(r.randint(EMOJI_BASE[i], EMOJI_BASE[i + 1])))
        elif x < 0.6:
            out.append(r.choice(ZWJ_SEQS))
        elif x < 0.7:
            out.append(chr(r.randint(0x1F466, 0x1F469)) + chr(r.randint(0x1F3FB, 0x1F3FF)))
        elif x < 0.78:
            out.append(chr(r.randint(0x1F1E6, 0x1F1FF)))
        elif x < 0.85:
            out.append("\u200d")
        else:
            out.append(rand_word(r) + r.choice([" ", "", "!"]))
    return "".join(out)


def combining(r):
    out = []
    for _ in range(r.randint(1, 20)):
        base = r.choice(["a", "e", "o", "A", "z", " ", "1", "ก", "क", "ש", "가", "!", "\n"])
        marks = "".join(chr(r.choice(COMBINING)) for _ in range(r.randint(0, 4)))
        out.append(base + marks)
        if r.random() < 0.2:
            out.append(chr(r.randint(0x1100, 0x1112)) + chr(r.randint(0x1161, 0x1175)))  # jamo
        if r.random() < 0.2:
            out.append(" ")
    s = "".join(out)
    if r.random() < 0.3:
        s = chr(r.choice(COMBINING)) + s    # a mark with no base
    return s


def digits(r):
    # every run length 1..40, plus separators that change the split
    n = r.randint(1, 40)
    pool = r.choice(DIGITS)
    run = "".join(r.choice(pool) for _ in range(n))
    pre = r.choice(["", " ", "x", "$", "-", "v", "第", "\n", "1.", "+"])
    post = r.choice(["", " ", "%", "px", "年", ".5", ",000", "\n", "th", "e10"])
    return pre + run + post


def whitespace(r):
    out = []
    for _ in range(r.randint(1, 25)):
        x = r.random()
        if x < 0.6:
            out.append("".join(r.choice(WHITESPACE) for _ in range(r.randint(1, 6))))
        else:
            out.append(r.choice([rand_word(r), "中文", "x", "1", "!", "日本"]))
    return "".join(out)


def punct(r):
    out = []
    for _ in range(r.randint(1, 20)):
        x = r.random()
        if x < 0.5:
            out.append("".join(r.choice(PUNCT) for _ in range(r.randint(1, 6))))
        elif x < 0.7:
            out.append(rand_word(r))
        elif x < 0.8:
            out.append(r.choice(["\n", "\r\n", " ", "\n\n"]))
        else:
            out.append(r.choice(PUNCT[:32]) + rand_word(r))
    return "".join(out)


def special(r, tokens):
    out = []
    for _ in range(r.randint(1, 12)):
        x = r.random()
        t = r.choice(tokens)
        if x < 0.45:
            out.append(t)
        elif x < 0.6:
            out.append(t[:r.randint(1, max(1, len(t) - 1))])      # cut short
        elif x < 0.7:
            out.append(t[r.randint(1, max(1, len(t) - 1)):])      # cut at the front
        elif x < 0.8:
            out.append(t + t)
        else:
            out.append(r.choice([prose(r), cjk(r), " ", "\n", "<", ">", "｜", "<<", "</"]))
    return "".join(out)


def random_utf8(r, allowed):
    out = []
    for _ in range(r.randint(1, 40)):
        x = r.random()
        if x < 0.35:
            cp = r.randint(0, 0x7F)
        elif x < 0.55:
            cp = r.randint(0x80, 0x7FF)
        elif x < 0.85:
            cp = r.randint(0x800, 0xFFFF)
        elif x < 0.95:
            cp = r.randint(0x10000, 0x2FFFF)
        else:
            cp = r.randint(0x30000, 0x10FFFF)
        if 0xD800 <= cp <= 0xDFFF:
            cp = 0xFFFD
        out.append(chr(cp))
    return "".join(out)


def mixed(r, tokens, allowed):
    parts = [g(r) for g in r.sample(SIMPLE, r.randint(2, 5))]
    if r.random() < 0.3:
        parts.append(special(r, tokens))
    if r.random() < 0.2:
        parts.append(random_utf8(r, allowed))
    return r.choice(["", " ", "\n"]).join(parts)


SIMPLE = [prose, code, cjk, kana, arabic, emoji, combining, digits, whitespace, punct]


def load_classes(path):
    ranges = []
    with open(path) as f:
        for line in f:
            if line.startswith("#"):
                continue
            a, b, bits = line.split()
            ranges.append((int(a, 16), int(b, 16), int(bits, 16)))
    return ranges


def disagreeing(c_path, js_path):
    """Code points whose class bits differ between the two tables."""
    a, b = load_classes(c_path), load_classes(js_path)
    bad = []
    i = j = 0
    while i < len(a) and j < len(b):
        lo = max(a[i][0], b[j][0])
        hi = min(a[i][1], b[j][1])
        if lo <= hi and a[i][2] != b[j][2]:
            bad.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return bad


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", required=True)
    ap.add_argument("--classes-c")
    ap.add_argument("--classes-js")
    ap.add_argument("--tokenizer", help="tokenizer.json whose added tokens to use")
    a = ap.parse_args()

    tokens = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>",
              "<think>", "</think>", "｜DSML｜", "<｜DSML｜invoke name=\"f\">", "<｜latest_reminder｜>",
              "<｜place▁holder▁no▁7｜>", "<|EOT|>", "<｜fim▁hole｜>", "<｜tool▁sep｜>"]
    if a.tokenizer:
        with open(a.tokenizer, encoding="utf-8") as f:
            added = [t["content"] for t in json.load(f)["added_tokens"]]
        tokens += [t for t in added if "place▁holder" not in t] + added[3:40]

    bad = []
    if a.classes_c and a.classes_js:
        bad = disagreeing(a.classes_c, a.classes_js)
    nbad = sum(hi - lo + 1 for lo, hi in bad)
    badset = set()
    for lo, hi in bad:
        badset.update(range(lo, hi + 1))

    r = random.Random(a.seed)
    gens = SIMPLE + [lambda r: special(r, tokens), lambda r: random_utf8(r, None),
                     lambda r: mixed(r, tokens, None)]
    names = [g.__name__ for g in SIMPLE] + ["special", "random_utf8", "mixed"]
    counts = [0] * len(gens)
    dropped = 0
    total = 0
    with open(a.out, "w", encoding="utf-8") as f:
        fixed = ["", " ", "\n", "a", "\r\n", "  \n\t ", "<｜User｜>", "日本語", "🇺🇳",
                 "x" * 5000, "中" * 3000, " " * 2000, "1" * 1000, "\n" * 500 + "a",
                 "ab" * 2000 + " " + "\t" * 100]
        for s in fixed:
            f.write(json.dumps(s) + "\n")
            total += len(s.encode())
        for i in range(a.n - len(fixed)):
            k = i % len(gens)
            s = gens[k](r)
            if badset:
                t = "".join(c for c in s if ord(c) not in badset)
                dropped += len(s) - len(t)
                s = t
            counts[k] += 1
            total += len(s.encode())
            f.write(json.dumps(s) + "\n")
    print("gen_corpus: %d strings, %d bytes; %s; %d code points differ between the two "
          "Unicode tables (%d occurrences removed)"
          % (a.n, total, ", ".join("%s %d" % x for x in zip(names, counts)), nbad, dropped),
          file=sys.stderr)


if __name__ == "__main__":
    main()
