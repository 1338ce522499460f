#!/usr/bin/python3
"""Line-by-line comparison for the tokenizer reference test.

    compare.py ids  EXPECTED GOT CORPUS   id lines (prints the text of the first mismatches)
    compare.py json EXPECTED GOT          JSON strings, compared after parsing

Prints "N mismatches of M" and exits non-zero on any mismatch or count difference.
"""
import json
import sys


def main():
    mode, want_path, got_path = sys.argv[1:4]
    want = open(want_path, encoding="utf-8").read().split("\n")
    got = open(got_path, encoding="utf-8").read().split("\n")
    corpus = open(sys.argv[4], encoding="utf-8").read().split("\n") if len(sys.argv) > 4 else None
    if want and want[-1] == "":
        want.pop()
    if got and got[-1] == "":
        got.pop()
    bad = 0
    for i in range(max(len(want), len(got))):
        a = want[i] if i < len(want) else None
        b = got[i] if i < len(got) else None
        if mode == "json" and a is not None and b is not None:
            same = json.loads(a) == json.loads(b)
        else:
            same = a == b
        if not same:
            bad += 1
            if bad <= 3:
                text = json.loads(corpus[i]) if corpus and i < len(corpus) else None
                print("  line %d: expected %s\n           got      %s%s" % (
                    i + 1, (a or "")[:200], (b or "")[:200],
                    "\n           text     %r" % text[:200] if text is not None else ""))
    print("%d mismatches of %d" % (bad, len(want)))
    sys.exit(1 if bad or len(want) != len(got) else 0)


if __name__ == "__main__":
    main()
