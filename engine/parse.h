/*
 * Incremental output parser: generated token ids in, client-ready deltas out.
 *
 * Splits reasoning from content at "</think>", turns DSML tool-call blocks
 * into OpenAI tool calls (one event per complete invoke, arguments as a
 * JSON object text), stops at the stop tokens (EOS, <｜User｜>,
 * <｜Assistant｜>, <｜latest_reminder｜>) and at user stop strings, which are
 * matched across token boundaries and never emitted.  Every emitted text is
 * valid UTF-8 (bytes of an unfinished character wait for the next token).
 *
 * Split invariance: the concatenated deltas do not depend on how the output
 * is cut into tokens or chunks; the parser only holds back text that could
 * still turn into a marker, and decides every match by the earliest start.
 *
 * Leniency (the official parser raises instead; a server must not):
 *   - thinking output with no "</think>" is all reasoning;
 *   - "<｜DSML｜tool_calls" is recognised with or without the "\n\n" before
 *     it (the "\n\n" is not content);
 *   - a DSML block that breaks the format (or is cut off by EOS / the
 *     length limit) degrades to plain content from the end of the last
 *     complete invoke, so no text is lost; DSML is not looked for again in
 *     that output;
 *   - a string="false" value that is not JSON is passed as a JSON string;
 *   - text after a tool-call block is content.
 * User stop strings apply to content only, not to reasoning or DSML.
 *
 * Memory: one parser per sequence; buffers grow to the working size and are
 * then reused, so the steady state does not allocate.  dsv4_parser_reset()
 * makes it ready for the next sequence without freeing.
 */
#ifndef DSV4_PARSE_H
#define DSV4_PARSE_H

#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"

typedef enum {
    DSV4_PARSE_RAW = 0,     /* plain completion: all content, no DSML */
    DSV4_PARSE_CHAT,        /* chat output that starts as content */
    DSV4_PARSE_REASONING    /* chat output that starts inside <think> */
} dsv4_parse_start;

typedef struct {
    dsv4_parse_start   start;
    int                parse_tools;  /* look for DSML tool calls in content */
    const char *const *stop;         /* user stop strings (UTF-8), copied */
    size_t             n_stop;
} dsv4_parser_options;

typedef enum {
    DSV4_EV_REASONING = 1,   /* text: a reasoning_content delta */
    DSV4_EV_CONTENT,         /* text: a content delta */
    DSV4_EV_TOOL_CALL,       /* index, name, text = arguments (JSON object) */
    DSV4_EV_STOP             /* the output is over; stop_reason says why */
} dsv4_event_type;

typedef enum {
    DSV4_STOP_TOKEN = 1,     /* a stop token (stop_token holds its id) */
    DSV4_STOP_STRING         /* user stop string number index */
} dsv4_stop_reason;

typedef struct {
    dsv4_event_type  type;
    const char      *text;       /* not NUL-terminated; valid until the next call */
    size_t           len;
    const char      *name;       /* TOOL_CALL: function name */
    size_t           name_len;
    int              index;      /* TOOL_CALL: 0-based call index; STOP_STRING: which */
    dsv4_stop_reason stop_reason;
    int32_t          stop_token;
} dsv4_event;

typedef struct dsv4_parser dsv4_parser;

/* tok is borrowed (must outlive the parser).  NULL on ENOMEM or on an
 * invalid stop string (not UTF-8). */
dsv4_parser *dsv4_parser_new(const dsv4_tokenizer *tok, const dsv4_parser_options *opt);
void         dsv4_parser_free(dsv4_parser *p);

/* Ready for a new sequence with new options; keeps the buffers.  -1 on
 * ENOMEM or a bad stop string. */
int dsv4_parser_reset(dsv4_parser *p, const dsv4_parser_options *opt);

/* Feeds one generated id.  *ev / *nev receive this call's events (owned by
 * the parser, valid until its next call).  Ids with no token (the padded
 * tail of the vocabulary) produce no text and are counted.  After a stop,
 * further feeds produce nothing.  0, or DSV4_TOK_ENOMEM. */
int dsv4_parser_feed(dsv4_parser *p, int32_t id, const dsv4_event **ev, size_t *nev);

/* Feeds raw output bytes (any split, even inside a character). */
int dsv4_parser_feed_text(dsv4_parser *p, const char *s, size_t n,
                          const dsv4_event **ev, size_t *nev);

/* Ends the output without a stop token (length limit, cancel): emits what
 * was held back; an unfinished DSML block becomes content. */
int dsv4_parser_finish(dsv4_parser *p, const dsv4_event **ev, size_t *nev);

/* 1 once a stop token or stop string has ended the output. */
int dsv4_parser_stopped(const dsv4_parser *p);

/* Ids fed that have no token. */
size_t dsv4_parser_unknown_ids(const dsv4_parser *p);

#endif
