// The reference tokenizer: @huggingface/tokenizers 0.2.0 (pure JavaScript),
// installed by scripts/fetch-tokenizer into .cache/tokenizer/node.
//
//   node hf_reference.mjs encode DIR corpus.jsonl   one id line per input line
//   node hf_reference.mjs decode DIR ids.txt        one JSON string per id line
//   node hf_reference.mjs bench  DIR corpus.jsonl [ROUNDS]
//                                                   encode throughput, MB/s
import { readFileSync, writeSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const require = createRequire(join(root, '.cache/tokenizer/node/'));
const { Tokenizer } = require('@huggingface/tokenizers');
const version = JSON.parse(readFileSync(join(root,
    '.cache/tokenizer/node/node_modules/@huggingface/tokenizers/package.json'), 'utf8')).version;
if (version !== '0.2.0') throw new Error(`reference tokenizer is ${version}, expected 0.2.0`);

const [mode, dir, input, rounds] = process.argv.slice(2);
const tok = new Tokenizer(JSON.parse(readFileSync(join(dir, 'tokenizer.json'), 'utf8')),
                          JSON.parse(readFileSync(join(dir, 'tokenizer_config.json'), 'utf8')));
const lines = readFileSync(input, 'utf8').split('\n').filter((l) => l.length > 0);

function out(chunks) {
    const s = chunks.join('\n') + '\n';
    const b = Buffer.from(s, 'utf8');
    for (let off = 0; off < b.length;) off += writeSync(1, b, off);
}

if (mode === 'encode') {
    out(lines.map((l) => tok.encode(JSON.parse(l)).ids.join(',')));
} else if (mode === 'decode') {
    out(lines.map((l) => {
        const ids = l.trim() === '' ? [] : l.split(',').map(Number);
        return JSON.stringify(ids.length ? tok.decode(ids) : '');
    }));
} else if (mode === 'bench') {
    const texts = lines.map((l) => JSON.parse(l));
    const bytes = texts.reduce((n, s) => n + Buffer.byteLength(s, 'utf8'), 0);
    const n = Number(rounds || 3);
    let ids = 0;
    for (const s of texts) ids += tok.encode(s).ids.length;   // warm-up (JIT)
    const t0 = process.hrtime.bigint();
    for (let r = 0; r < n; r++) for (const s of texts) ids += tok.encode(s).ids.length;
    const sec = Number(process.hrtime.bigint() - t0) / 1e9;
    console.log(`hf_js_bytes ${bytes * n} seconds ${sec.toFixed(3)} mb_per_s ${(bytes * n / sec / 1e6).toFixed(3)}`);
} else {
    console.error('usage: hf_reference.mjs encode|decode|bench DIR FILE');
    process.exit(2);
}
