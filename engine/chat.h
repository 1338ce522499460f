/*
 * DeepSeek-V4 chat encoding: an OpenAI-style request body -> prompt text.
 *
 * Reproduces the official encoder (encoding/encoding_dsv4.py, summarised in
 * V4-MODEL.md §6.2) byte for byte: BOS, the reasoning-effort "max" prefix,
 * system / user / assistant / tool / developer / latest_reminder roles,
 * tools rendered with the verbatim DSML tools template and Python-json.dumps
 * schemas, tool results merged into user turns and re-ordered to the order
 * of the calls, response_format, earlier reasoning dropped, the
 * <｜Assistant｜><think> / </think> transitions.  The prompt is text; the
 * tokenizer turns its special-token spellings into single ids.
 *
 * How request fields map onto the official encoder's inputs (the official
 * code takes Python dicts, not an HTTP body):
 *   messages[]            the conversation.  content: string, null, or an
 *                         array of {"type":"text"} parts (joined with no
 *                         separator; other part types are rejected).
 *                         Assistant reasoning: "reasoning_content", or
 *                         "reasoning" when that is absent (vLLM's name).
 *                         Assistant "prefix": true (DeepSeek's prefix
 *                         completion) = the encoder's "wo_eos": no EOS, so
 *                         generation continues that turn.
 *   tools                 attached to the first message when it is system
 *                         or developer, else to a new empty system message
 *                         put first (what vLLM does; the official tests put
 *                         them on the system message).
 *   response_format       the same, unless {"type":"text"}; the whole object
 *                         is dumped into the prompt.
 *   thinking              true/false, or {"type":"enabled"|"disabled"}
 *                         (DeepSeek API); chat_template_kwargs.thinking /
 *                         enable_thinking are read too.
 *   reasoning_effort      "max" -> thinking with the max prefix; "high",
 *                         "medium", "low", "minimal" -> thinking, no prefix
 *                         (the encoder only knows max / high / none);
 *                         "none" -> non-thinking.  An explicit thinking
 *                         false wins over any effort.
 * Anything else in the body is ignored here.
 */
#ifndef DSV4_CHAT_H
#define DSV4_CHAT_H

#include <jansson.h>
#include <stddef.h>

typedef struct {
    int thinking;       /* mode when the request does not choose: 1 thinking, 0 chat */
    int drop_thinking;  /* drop reasoning before the last user turn (official: 1) */
    int add_bos;        /* start the prompt with BOS (official: 1) */
} dsv4_chat_options;

/* thinking 0, drop_thinking 1, add_bos 1 */
void dsv4_chat_options_default(dsv4_chat_options *o);

typedef struct {
    char   *text;            /* NUL-terminated prompt, owned: dsv4_chat_prompt_free */
    size_t  len;
    int     thinking;        /* the mode the prompt was rendered in */
    int     reasoning_open;  /* the prompt ends in "<think>": output starts as reasoning */
    int     has_tools;       /* tools were rendered: parse DSML tool calls */
} dsv4_chat_prompt;

/* Encodes request (an object with "messages").  On a bad request returns -1
 * with a one-line reason in err naming the field (for a 400), and out->text
 * is NULL; -2 on ENOMEM.  request is only read. */
int dsv4_chat_encode(const json_t *request, const dsv4_chat_options *opt,
                     dsv4_chat_prompt *out, char *err, size_t errlen);

/* Same, from a JSON body; a body that is not valid JSON is a -1 too. */
int dsv4_chat_encode_json(const char *body, size_t len, const dsv4_chat_options *opt,
                          dsv4_chat_prompt *out, char *err, size_t errlen);

void dsv4_chat_prompt_free(dsv4_chat_prompt *p);

/* Spellings the output parser and tests share. */
#define DSV4_BOS        "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"
#define DSV4_EOS        "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"
#define DSV4_USER       "<\xef\xbd\x9cUser\xef\xbd\x9c>"
#define DSV4_ASSISTANT  "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>"
#define DSV4_REMINDER   "<\xef\xbd\x9clatest_reminder\xef\xbd\x9c>"
#define DSV4_THINK      "<think>"
#define DSV4_THINK_END  "</think>"
#define DSV4_DSML       "\xef\xbd\x9c" "DSML\xef\xbd\x9c"

#endif
