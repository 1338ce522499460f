// The reference side of unicode_classes.c: the same classes as JavaScript's
// regex engine (the one @huggingface/tokenizers runs on) sees them.
const props = [/^\p{L}$/u, /^\p{M}$/u, /^\p{N}$/u, /^\p{P}$/u, /^\p{S}$/u, /^\p{White_Space}$/u];
const out = [`# js unicode ${process.versions.unicode}`];
let prev = -1, start = 0;
for (let cp = 0; cp <= 0x110000; cp++) {
    if (cp >= 0xd800 && cp <= 0xdfff) continue;
    let bits = -2;
    if (cp < 0x110000) {
        const s = String.fromCodePoint(cp);
        bits = 0;
        for (let i = 0; i < 6; i++) if (props[i].test(s)) bits |= 1 << i;
    }
    if (bits !== prev) {
        if (prev !== -1) out.push(`${start.toString(16)} ${(cp - 1).toString(16)} ${prev.toString(16)}`);
        start = cp;
        prev = bits;
    }
}
process.stdout.write(out.join('\n') + '\n');
