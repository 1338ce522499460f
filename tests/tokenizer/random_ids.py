#!/usr/bin/python3
"""Random token-id sequences for the decode comparison, one comma-separated
line each.  Half the ids are single-byte tokens, so characters get split
across tokens and broken (the replacement rule is compared too); the rest
come from the whole id space of tokenizer.json (gaps excluded).

    random_ids.py tokenizer.json N SEED
"""
import json
import random
import sys

BYTES = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))


def byte_chars():
    """GPT-2's byte -> character table (the byte-level alphabet)."""
    cs = BYTES[:]
    bs = BYTES[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def main():
    path, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    tok = json.load(open(path, encoding="utf-8"))
    vocab = tok["model"]["vocab"]
    ids = sorted(set(vocab.values()) | {t["id"] for t in tok["added_tokens"]})
    byte_ids = [vocab[c] for c in byte_chars().values() if c in vocab]
    added = [t["id"] for t in tok["added_tokens"]]
    r = random.Random(seed)
    for _ in range(n):
        k = r.randint(1, 30)
        seq = []
        for _ in range(k):
            x = r.random()
            seq.append(r.choice(byte_ids) if x < 0.5 else r.choice(added) if x < 0.55 else r.choice(ids))
        print(",".join(map(str, seq)))


if __name__ == "__main__":
    main()
