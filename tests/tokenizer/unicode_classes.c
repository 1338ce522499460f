/*
 * Prints, as "first last bits" ranges (hex), the Unicode classes the
 * pre-tokenizer regexes use, as PCRE2 (this machine's libpcre2-8) sees them:
 * bit 0 \p{L}, 1 \p{M}, 2 \p{N}, 3 \p{P}, 4 \p{S}, 5 \p{White_Space}.
 * unicode_classes.mjs prints the same for the reference (JavaScript / ICU);
 * gen_corpus.py keeps code points on which they disagree (characters newer
 * than one side's Unicode version) out of the random-text corpus.
 *
 * Test helper, built by tests/scripts/test_tokenizer_reference:
 *   cc tests/tokenizer/unicode_classes.c -lpcre2-8
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdio.h>

static const char *props[] = {"\\p{L}", "\\p{M}", "\\p{N}", "\\p{P}", "\\p{S}", "\\p{White_Space}"};

int
main(void)
{
    pcre2_code       *re[6];
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    unsigned          prev = 0xFFFFFFFFu, start = 0;
    int               err;
    PCRE2_SIZE        off;
    char              ver[32];

    for (int i = 0; i < 6; i++) {
        re[i] = pcre2_compile((PCRE2_SPTR) props[i], PCRE2_ZERO_TERMINATED,
                              PCRE2_UTF | PCRE2_UCP | PCRE2_ANCHORED, &err, &off, NULL);
        if (re[i] == NULL) return 1;
    }
    pcre2_config(PCRE2_CONFIG_UNICODE_VERSION, ver);
    printf("# pcre2 unicode %s\n", ver);
    for (unsigned cp = 0; cp <= 0x110000; cp++) {
        unsigned char buf[4];
        unsigned      bits = 0, n;

        if (cp >= 0xD800 && cp <= 0xDFFF) continue;   /* not characters */
        if (cp < 0x110000) {
            if (cp < 0x80) { buf[0] = (unsigned char) cp; n = 1; }
            else if (cp < 0x800) { buf[0] = 0xC0 | (cp >> 6); buf[1] = 0x80 | (cp & 63); n = 2; }
            else if (cp < 0x10000) { buf[0] = 0xE0 | (cp >> 12); buf[1] = 0x80 | ((cp >> 6) & 63); buf[2] = 0x80 | (cp & 63); n = 3; }
            else { buf[0] = 0xF0 | (cp >> 18); buf[1] = 0x80 | ((cp >> 12) & 63); buf[2] = 0x80 | ((cp >> 6) & 63); buf[3] = 0x80 | (cp & 63); n = 4; }
            for (int i = 0; i < 6; i++) {
                if (pcre2_match(re[i], buf, n, 0, 0, md, NULL) > 0) bits |= 1u << i;
            }
        } else {
            bits = 0xFFFFFFFFu;    /* sentinel: flush the last range */
        }
        if (bits != prev) {
            if (prev != 0xFFFFFFFFu) printf("%x %x %x\n", start, cp - 1, prev);
            start = cp;
            prev = bits;
        }
    }
    return 0;
}
