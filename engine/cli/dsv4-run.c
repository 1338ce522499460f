/*
 * dsv4-run: generate from a model directory without nginx.
 *
 *   dsv4-run -m DIR --prompt-ids 5,17,42 -n 8 [--temperature 0] [--seed S]
 *            [--logits-out FILE] [--mtp-out FILE] [--chunk N] [--ctx N]
 *            [--threads N] [--kernels auto|scalar|avx512|avx2|generic] ...
 *   dsv4-run -m DIR --prompt "text" [-n N] [--think] [--raw] ...
 *   dsv4-run -m DIR --inspect
 *
 * With --prompt-ids, prints the generated ids comma-separated on one stdout
 * line; with --prompt, streams the generated text.  Exit 0 on success, 1
 * with a one-line error on stderr otherwise.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include <jansson.h>

#include "chat.h"
#include "dsv4.h"
#include "tokenizer.h"
#include "sample.h"

static void
usage(FILE *f)
{
    fprintf(f,
        "usage: dsv4-run -m MODEL_DIR --prompt-ids ID,ID,... [-n N] [options]\n"
        "       dsv4-run -m MODEL_DIR --prompt TEXT [-n N] [--think] [--raw] [options]\n"
        "       dsv4-run -m MODEL_DIR --inspect\n"
        "\n"
        "  -m, --model DIR         model directory (config.json + safetensors shards)\n"
        "      --prompt-ids LIST   prompt token ids, comma-separated, fed from position 0\n"
        "      --prompt TEXT       a user message, rendered with the V4 chat encoding and\n"
        "                          tokenized with the model's tokenizer.json; the reply\n"
        "                          is streamed as text and ends at EOS\n"
        "      --think             thinking mode for --prompt (default: chat mode)\n"
        "      --raw               --prompt is raw text (BOS + text), not a chat turn\n"
        "  -n N                    tokens to generate (default 16)\n"
        "      --stop-eos          stop early when the model emits its EOS token\n"
        "      --temperature T     0 = greedy (default 1.0)\n"
        "      --top-k K  --top-p P  --min-p P\n"
        "      --repetition-penalty R  --frequency-penalty F  --presence-penalty P\n"
        "      --seed S            RNG seed (default 0): same seed, same tokens\n"
        "      --logits-out FILE   write float32 LE logits, one row of vocab_size per\n"
        "                          generated token (row 0 = prefill's last position)\n"
        "      --mtp-out FILE      write the MTP block's logits for every position t\n"
        "                          whose next token is known (t = 0 .. prompt+n-2)\n"
        "      --chunk N           prefill chunk size (default 64)\n"
        "      --ctx N             context capacity (default prompt + n)\n"
        "      --threads N         compute threads (default 0 = one per available CPU)\n"
        "      --kernels K         auto (default: the best this CPU runs), avx512, avx2,\n"
        "                          generic (portable C) or scalar (the reference)\n"
        "      --inspect           validate the tensor inventory without reading weights;\n"
        "                          print parameter counts and mapped bytes\n"
        "  -h, --help\n");
}

static int
parse_ids(const char *s, int32_t **out, int *n)
{
    int   cap = 16;
    char *end;

    *n = 0;
    *out = malloc((size_t) cap * sizeof(**out));
    if (*out == NULL) {
        return -1;
    }
    while (*s) {
        errno = 0;
        long v = strtol(s, &end, 10);
        if (end == s || errno != 0 || v < 0 || v > 0x7fffffff || (*end != ',' && *end != '\0')) {
            return -1;
        }
        if (*n == cap) {
            int32_t *nb = realloc(*out, (size_t) (cap *= 2) * sizeof(**out));
            if (nb == NULL) {
                return -1;
            }
            *out = nb;
        }
        (*out)[(*n)++] = (int32_t) v;
        s = *end ? end + 1 : end;
    }
    return *n > 0 ? 0 : -1;
}

static int
parse_num(const char *name, const char *s, double lo, double hi, double *out)
{
    char *end;

    errno = 0;
    *out = strtod(s, &end);
    if (end == s || *end != '\0' || errno != 0 || !(*out >= lo && *out <= hi)) {
        fprintf(stderr, "dsv4-run: invalid %s \"%s\" (expected %g..%g)\n", name, s, lo, hi);
        return -1;
    }
    return 0;
}

/* Renders text as a one-message chat (or BOS + text with raw) and tokenizes
 * it with DIR's tokenizer.  On success *tok and *ids belong to the caller. */
static int
encode_prompt(const char *dir, const char *text, int think, int raw, dsv4_tokenizer **tok,
              int32_t **ids, int *nids)
{
    char              err[512];
    dsv4_chat_options opt;
    dsv4_chat_prompt  cp = { 0 };
    json_t           *req;
    size_t            n = 0;
    int               rc;

    if (dsv4_tokenizer_load(dir, tok, err, sizeof(err)) != 0) {
        fprintf(stderr, "dsv4-run: %s\n", err);
        return -1;
    }
    if (raw) {
        size_t len = strlen(text) + sizeof(DSV4_BOS);
        if ((cp.text = malloc(len)) == NULL) {
            fprintf(stderr, "dsv4-run: out of memory\n");
            return -1;
        }
        cp.len = (size_t) snprintf(cp.text, len, "%s%s", DSV4_BOS, text);
    } else {
        req = json_pack("{s:[{s:s,s:s}],s:b}", "messages", "role", "user", "content", text,
                        "thinking", think);
        if (req == NULL) {
            fprintf(stderr, "dsv4-run: --prompt is not valid UTF-8\n");
            return -1;
        }
        dsv4_chat_options_default(&opt);
        rc = dsv4_chat_encode(req, &opt, &cp, err, sizeof(err));
        json_decref(req);
        if (rc != 0) {
            fprintf(stderr, "dsv4-run: chat encoding: %s\n", err);
            return -1;
        }
    }
    rc = dsv4_tokenizer_encode_alloc(*tok, cp.text, cp.len, ids, &n);
    if (raw) {
        free(cp.text);
    } else {
        dsv4_chat_prompt_free(&cp);
    }
    if (rc != DSV4_TOK_OK || n == 0) {
        fprintf(stderr, "dsv4-run: cannot tokenize --prompt (%s)\n",
                rc == DSV4_TOK_EINVAL ? "invalid UTF-8" : "error");
        return -1;
    }
    *nids = (int) n;
    return 0;
}

/* Runs the MTP block for one position and appends its logits row to f. */
static int
write_mtp_row(dsv4_ctx *c, dsv4_seq *s, const float *hidden, int32_t next, float *logits,
              int vocab, FILE *f)
{
    char err[512];

    if (dsv4_mtp_forward(c, s, hidden, next, logits, err, sizeof(err)) != 0) {
        fprintf(stderr, "dsv4-run: mtp: %s\n", err);
        return -1;
    }
    if (fwrite(logits, sizeof(float), (size_t) vocab, f) != (size_t) vocab) {
        fprintf(stderr, "dsv4-run: write of the MTP logits failed\n");
        return -1;
    }
    return 0;
}

static int
inspect(const char *dir)
{
    char             err[512];
    dsv4_model      *m;
    dsv4_model_stats st;

    if (dsv4_model_load(&m, dir, DSV4_LOAD_LAYOUT_ONLY, err, sizeof(err)) != 0) {
        fprintf(stderr, "dsv4-run: %s\n", err);
        return 1;
    }
    dsv4_model_get_stats(m, &st);
    const dsv4_config *c = dsv4_model_config(m);
    printf("layers %d (+%d MTP), hidden %d, heads %d, experts %d (k=%d), vocab %d\n",
           c->n_layers, c->n_mtp_layers, c->dim, c->n_heads, c->n_routed_experts,
           c->n_active_experts, c->vocab_size);
    printf("tensors %zu\nshards %d\n", st.n_tensors, st.n_shards);
    printf("params %llu\nparams_mtp %llu\nparams_total %llu\nparams_active %llu\n",
           (unsigned long long) st.params, (unsigned long long) st.params_mtp,
           (unsigned long long) (st.params + st.params_mtp),
           (unsigned long long) st.params_active);
    printf("mapped_bytes %zu\n", st.mapped_bytes);
    dsv4_model_free(m);
    /* evidence that validating the inventory read no weight data */
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0) {
        printf("peak_rss_kb %ld\n", ru.ru_maxrss);
    }
    return 0;
}

int
main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "model", required_argument, NULL, 'm' },
        { "prompt-ids", required_argument, NULL, 'p' },
        { "prompt", required_argument, NULL, 'q' },
        { "think", no_argument, NULL, 'H' },
        { "raw", no_argument, NULL, 'r' },
        { "temperature", required_argument, NULL, 't' },
        { "top-k", required_argument, NULL, 'k' },
        { "top-p", required_argument, NULL, 'P' },
        { "min-p", required_argument, NULL, 'M' },
        { "repetition-penalty", required_argument, NULL, 'R' },
        { "frequency-penalty", required_argument, NULL, 'F' },
        { "presence-penalty", required_argument, NULL, 'E' },
        { "seed", required_argument, NULL, 's' },
        { "logits-out", required_argument, NULL, 'l' },
        { "mtp-out", required_argument, NULL, 'T' },
        { "chunk", required_argument, NULL, 'c' },
        { "ctx", required_argument, NULL, 'x' },
        { "threads", required_argument, NULL, 'j' },
        { "kernels", required_argument, NULL, 'K' },
        { "stop-eos", no_argument, NULL, 'e' },
        { "inspect", no_argument, NULL, 'i' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char        *dir = NULL, *ids_arg = NULL, *logits_path = NULL, *mtp_path = NULL;
    const char        *kernels = "auto", *text = NULL;
    int                think = 0, raw = 0;
    int                ngen = 16, chunk = 64, ctx_size = 0, do_inspect = 0, stop_eos = 0;
    int                nthreads = 0;
    int                opt, rc = 1, nprompt = 0;
    double             v;
    int32_t           *prompt = NULL;
    dsv4_sample_params sp;
    char               err[512];

    dsv4_sample_params_default(&sp);
    while ((opt = getopt_long(argc, argv, "m:n:h", opts, NULL)) != -1) {
        switch (opt) {
        case 'm': dir = optarg; break;
        case 'p': ids_arg = optarg; break;
        case 'q': text = optarg; break;
        case 'H': think = 1; break;
        case 'r': raw = 1; break;
        case 'l': logits_path = optarg; break;
        case 'T': mtp_path = optarg; break;
        case 'e': stop_eos = 1; break;
        case 'i': do_inspect = 1; break;
        case 'h': usage(stdout); return 0;
        case 'n':
            if (parse_num("-n", optarg, 0, 1 << 24, &v)) return 1;
            ngen = (int) v;
            break;
        case 'c':
            if (parse_num("--chunk", optarg, 1, 1 << 16, &v)) return 1;
            chunk = (int) v;
            break;
        case 'x':
            if (parse_num("--ctx", optarg, 1, 1 << 24, &v)) return 1;
            ctx_size = (int) v;
            break;
        case 'j':
            if (parse_num("--threads", optarg, 0, 1024, &v)) return 1;
            nthreads = (int) v;
            break;
        case 'K': kernels = optarg; break;
        case 't':
            if (parse_num("--temperature", optarg, 0, 1e6, &v)) return 1;
            sp.temperature = (float) v;
            break;
        case 'k':
            if (parse_num("--top-k", optarg, -1, 1 << 30, &v)) return 1;
            sp.top_k = (int) v;
            break;
        case 'P':
            if (parse_num("--top-p", optarg, -1e9, 1e9, &v)) return 1;
            sp.top_p = (float) v;
            break;
        case 'M':
            if (parse_num("--min-p", optarg, -1e9, 1e9, &v)) return 1;
            sp.min_p = (float) v;
            break;
        case 'R':
            if (parse_num("--repetition-penalty", optarg, -1e9, 1e9, &v)) return 1;
            sp.repetition_penalty = (float) v;
            break;
        case 'F':
            if (parse_num("--frequency-penalty", optarg, -1e9, 1e9, &v)) return 1;
            sp.frequency_penalty = (float) v;
            break;
        case 'E':
            if (parse_num("--presence-penalty", optarg, -1e9, 1e9, &v)) return 1;
            sp.presence_penalty = (float) v;
            break;
        case 's':
            if (parse_num("--seed", optarg, 0, 1.8e19, &v)) return 1;
            sp.seed = (uint64_t) v;
            break;
        default:
            usage(stderr);
            return 1;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "dsv4-run: unexpected argument \"%s\"\n", argv[optind]);
        return 1;
    }
    if (dir == NULL) {
        fprintf(stderr, "dsv4-run: missing -m MODEL_DIR (see --help)\n");
        return 1;
    }
    if (do_inspect) {
        return inspect(dir);
    }
    if ((ids_arg == NULL) == (text == NULL)) {
        fprintf(stderr, "dsv4-run: give exactly one of --prompt-ids and --prompt\n");
        return 1;
    }
    if (ids_arg != NULL && parse_ids(ids_arg, &prompt, &nprompt) != 0) {
        fprintf(stderr, "dsv4-run: --prompt-ids needs a comma-separated list of token ids\n");
        free(prompt);
        return 1;
    }

    dsv4_model         *m = NULL;
    const dsv4_backend *be = NULL, *be_owned = NULL;
    dsv4_seq     *s = NULL;
    dsv4_ctx     *c = NULL;
    dsv4_tokenizer *tok_model = NULL;
    dsv4_decoder    dec;
    char           *piece = NULL;
    dsv4_sampler *smp = NULL;
    float        *logits = NULL, *mtp_logits = NULL, *pending_hidden = NULL;
    FILE         *lf = NULL, *mf = NULL;
    int32_t       tok;

    if (dsv4_model_load(&m, dir, 0, err, sizeof(err)) != 0) {
        fprintf(stderr, "dsv4-run: %s\n", err);
        goto done;
    }
    const dsv4_config *cfg = dsv4_model_config(m);
    int                vocab = cfg->vocab_size, hcd = cfg->hc_mult * cfg->dim;
    if (text != NULL) {
        if (encode_prompt(dir, text, think, raw, &tok_model, &prompt, &nprompt) != 0) {
            goto done;
        }
        dsv4_decoder_init(&dec, tok_model);
        piece = malloc(dsv4_decoder_bound(tok_model) + 4);
        if (piece == NULL) {
            fprintf(stderr, "dsv4-run: out of memory\n");
            goto done;
        }
        stop_eos = 1;
    }
    if (ctx_size == 0) {
        ctx_size = nprompt + ngen;
    }
    if (nprompt + ngen > ctx_size + 1) {
        fprintf(stderr, "dsv4-run: prompt (%d) + n (%d) exceed --ctx %d\n", nprompt, ngen,
                ctx_size);
        goto done;
    }
    if (dsv4_sample_params_check(&sp, vocab, err, sizeof(err)) != 0) {
        fprintf(stderr, "dsv4-run: %s\n", err);
        goto done;
    }
    if (mtp_path != NULL && cfg->n_mtp_layers == 0) {
        fprintf(stderr, "dsv4-run: --mtp-out: model has no MTP block\n");
        goto done;
    }
    if (strcmp(kernels, "scalar") == 0) {
        be = dsv4_backend_cpu_scalar();
    } else {
        dsv4_cpu_opts o = { nthreads, kernels, 0 };
        if ((be = be_owned = dsv4_backend_cpu_new_opts(&o, err, sizeof(err))) == NULL) {
            fprintf(stderr, "dsv4-run: --kernels %s: %s\n", kernels, err);
            goto done;
        }
    }
    if ((s = dsv4_seq_new(m, ctx_size, err, sizeof(err))) == NULL
        || (c = dsv4_ctx_new(m, be, chunk, ctx_size, err, sizeof(err))) == NULL) {
        fprintf(stderr, "dsv4-run: %s\n", err);
        goto done;
    }
    logits = malloc((size_t) vocab * sizeof(float));
    mtp_logits = malloc((size_t) vocab * sizeof(float));
    pending_hidden = malloc((size_t) hcd * sizeof(float));
    smp = dsv4_sampler_new(vocab, &sp);
    if (logits == NULL || mtp_logits == NULL || pending_hidden == NULL || smp == NULL) {
        fprintf(stderr, "dsv4-run: out of memory\n");
        goto done;
    }
    if (logits_path && (lf = fopen(logits_path, "wb")) == NULL) {
        fprintf(stderr, "dsv4-run: cannot write %s: %s\n", logits_path, strerror(errno));
        goto done;
    }
    if (mtp_path && (mf = fopen(mtp_path, "wb")) == NULL) {
        fprintf(stderr, "dsv4-run: cannot write %s: %s\n", mtp_path, strerror(errno));
        goto done;
    }
    dsv4_sampler_accept_prompt(smp, prompt, nprompt);

    /* The MTP block at position t needs token t+1, known only once the next
     * chunk (or the next sampled token) arrives: the hidden state of each
     * chunk's last position waits in pending_hidden. */
    int have_pending = 0, generated = 0;
    const int32_t *feed = prompt;
    int            nfeed = nprompt;
    while (generated < ngen) {
        for (int off = 0; off < nfeed; off += chunk) {
            int n = nfeed - off < chunk ? nfeed - off : chunk;
            int last = off + n == nfeed;
            if (dsv4_forward(c, s, feed + off, n, last ? logits : NULL, err, sizeof(err)) != 0) {
                fprintf(stderr, "dsv4-run: %s\n", err);
                goto done;
            }
            if (mf != NULL) {
                for (int i = -1; i < n - 1; i++) {
                    const float *h = i < 0 ? pending_hidden : dsv4_ctx_hidden(c, i);
                    if (i < 0 && !have_pending) {
                        continue;
                    }
                    if (write_mtp_row(c, s, h, feed[off + i + 1], mtp_logits, vocab, mf) != 0) {
                        goto done;
                    }
                }
                memcpy(pending_hidden, dsv4_ctx_hidden(c, n - 1), (size_t) hcd * sizeof(float));
                have_pending = 1;
            }
        }
        if (lf != NULL && fwrite(logits, sizeof(float), (size_t) vocab, lf) != (size_t) vocab) {
            fprintf(stderr, "dsv4-run: write %s failed\n", logits_path);
            goto done;
        }
        tok = dsv4_sampler_sample(smp, logits);
        if (tok < 0) {
            fprintf(stderr, "dsv4-run: no token has a finite logit\n");
            goto done;
        }
        if (tok_model != NULL) {
            size_t len = 0;
            if (tok != cfg->eos_token_id
                && dsv4_decoder_push(&dec, tok, piece, dsv4_decoder_bound(tok_model), &len) == 0) {
                fwrite(piece, 1, len, stdout);
                fflush(stdout);
            }
        } else {
            printf("%s%d", generated ? "," : "", tok);
        }
        generated++;
        if (mf != NULL) {
            if (write_mtp_row(c, s, pending_hidden, tok, mtp_logits, vocab, mf) != 0) {
                goto done;
            }
            have_pending = 0;
        }
        if (generated == ngen || (stop_eos && tok == cfg->eos_token_id)) {
            break;
        }
        feed = &tok;
        nfeed = 1;
    }
    if (tok_model != NULL) {
        fwrite(piece, 1, dsv4_decoder_flush(&dec, piece), stdout);
    }
    printf("\n");
    rc = 0;
done:
    if (lf != NULL && fclose(lf) != 0) {
        rc = 1;
    }
    if (mf != NULL && fclose(mf) != 0) {
        rc = 1;
    }
    free(logits);
    free(mtp_logits);
    free(pending_hidden);
    free(prompt);
    free(piece);
    dsv4_tokenizer_free(tok_model);
    dsv4_sampler_free(smp);
    dsv4_ctx_free(c);
    dsv4_seq_free(s);
    dsv4_backend_cpu_free(be_owned);
    dsv4_model_free(m);
    return rc;
}
