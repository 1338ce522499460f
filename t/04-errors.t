#!/usr/bin/perl
# Bad input never crashes a worker: each case gets OpenAI's error shape with
# the right status, and the same worker goes on serving.  Also: queue full
# -> 503 with Retry-After, and the body size limit -> 413.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Dsv4Nginx;

my $t = Dsv4Nginx->standard(http => "    dsv4_max_body_size 64k;\n"
                                  . "    dsv4_max_tokens 1000;\n    dsv4_max_n 4;\n"
                                  . "    dsv4_max_prompt_tokens 500;\n",
                           server => "        location = /big { dsv4_api completions;"
                                   . " dsv4_max_prompt_tokens 0; }\n");
ok($t->run, 'nginx starts');
my $pid = $t->{pid};

my $m = [{ role => 'user', content => 'hi' }];

# [name, path, body (ref: JSON-encoded; string: raw), status, param regex, message regex]
my @cases = (
    ['malformed JSON', '/v1/chat/completions', '{"model": "demo", "messages": [', 400, undef, qr/invalid JSON/],
    ['not an object', '/v1/chat/completions', '[1,2,3]', 400, undef, qr/must be a JSON object/],
    ['empty body', '/v1/chat/completions', '', 400, undef, qr/empty/],
    ['invalid UTF-8', '/v1/chat/completions', "{\"model\":\"demo\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\"}]}", 400, undef, qr/invalid JSON|UTF-8/],
    ['NUL in a string', '/v1/chat/completions', '{"model":"demo","messages":[{"role":"user","content":"a\u0000b"}]}', 400, undef, qr/invalid JSON/],
    ['unknown model', '/v1/chat/completions', { model => 'gpt-17', messages => $m }, 404, qr/^model$/, qr/gpt-17/],
    ['model not a string', '/v1/chat/completions', { model => 5, messages => $m }, 400, qr/^model$/, qr/must be a string/],
    ['missing messages', '/v1/chat/completions', { model => 'demo' }, 400, qr/^messages$/, qr/required/],
    ['empty messages', '/v1/chat/completions', { model => 'demo', messages => [] }, 400, qr/^messages$/, qr/empty/],
    ['messages not an array', '/v1/chat/completions', { model => 'demo', messages => 'hi' }, 400, qr/^messages$/, qr/array/],
    ['bad role', '/v1/chat/completions', { model => 'demo', messages => [{ role => 'wizard', content => 'x' }] }, 400, qr/^messages$/, qr/role/],
    ['temperature wrong type', '/v1/chat/completions', { model => 'demo', messages => $m, temperature => 'hot' }, 400, qr/^temperature$/, qr/must be a number/],
    ['temperature out of range', '/v1/chat/completions', { model => 'demo', messages => $m, temperature => -1 }, 400, qr/^temperature$/, qr/\[0, 100\]/],
    ['top_p zero', '/v1/chat/completions', { model => 'demo', messages => $m, top_p => 0 }, 400, qr/^top_p$/, qr/top_p/],
    ['frequency_penalty too big', '/v1/chat/completions', { model => 'demo', messages => $m, frequency_penalty => 5 }, 400, qr/^frequency_penalty$/, qr/\[-2, 2\]/],
    ['max_tokens absurd', '/v1/chat/completions', { model => 'demo', messages => $m, max_tokens => 1e12 }, 400, qr/^max_tokens$/, qr/\[1, 1000\]/],
    ['max_tokens zero', '/v1/chat/completions', { model => 'demo', messages => $m, max_tokens => 0 }, 400, qr/^max_tokens$/, qr/max_tokens/],
    ['max_tokens fractional', '/v1/chat/completions', { model => 'demo', messages => $m, max_tokens => 2.5 }, 400, qr/^max_tokens$/, qr/integer/],
    ['max_tokens string', '/v1/chat/completions', { model => 'demo', messages => $m, max_tokens => '10' }, 400, qr/^max_tokens$/, qr/integer/],
    ['n absurd', '/v1/chat/completions', { model => 'demo', messages => $m, n => 1000000 }, 400, qr/^n$/, qr/\[1, 4\]/],
    ['n zero', '/v1/chat/completions', { model => 'demo', messages => $m, n => 0 }, 400, qr/^n$/, qr/n/],
    ['huge integer', '/v1/chat/completions', '{"model":"demo","messages":[{"role":"user","content":"x"}],"seed":123456789012345678901234567890}', 400, undef, qr/invalid JSON/],
    ['stream not a boolean', '/v1/chat/completions', { model => 'demo', messages => $m, stream => 'yes' }, 400, qr/^stream$/, qr/boolean/],
    ['stop wrong type', '/v1/chat/completions', { model => 'demo', messages => $m, stop => 5 }, 400, qr/^stop$/, qr/string/],
    ['too many stop strings', '/v1/chat/completions', { model => 'demo', messages => $m, stop => [('x') x 20] }, 400, qr/^stop$/, qr/at most/],
    ['logit_bias bad id', '/v1/chat/completions', { model => 'demo', messages => $m, logit_bias => { 'abc' => 1 } }, 400, qr/^logit_bias$/, qr/token id/],
    ['logit_bias id out of vocab', '/v1/chat/completions', { model => 'demo', messages => $m, logit_bias => { '99999999' => 1 } }, 400, qr/^logit_bias$/, qr/token id/],
    ['logit_bias value too big', '/v1/chat/completions', { model => 'demo', messages => $m, logit_bias => { '5' => 500 } }, 400, qr/^logit_bias$/, qr/\[-100, 100\]/],
    ['top_logprobs without logprobs', '/v1/chat/completions', { model => 'demo', messages => $m, top_logprobs => 2 }, 400, qr/^top_logprobs$/, qr/requires/],
    ['top_logprobs too many', '/v1/chat/completions', { model => 'demo', messages => $m, logprobs => JSON::PP::true, top_logprobs => 50 }, 400, qr/^top_logprobs$/, qr/\[0, 20\]/],
    ['tool_choice required without tools', '/v1/chat/completions', { model => 'demo', messages => $m, tool_choice => 'required' }, 400, qr/^tool_choice$/, qr/needs 'tools'/],
    ['tool_choice names an unknown function', '/v1/chat/completions', { model => 'demo', messages => $m, tools => [{ type => 'function', function => { name => 'f', parameters => {} } }], tool_choice => { type => 'function', function => { name => 'g' } } }, 400, qr/^tool_choice$/, qr/'g'/],
    ['tool_choice object without a name', '/v1/chat/completions', { model => 'demo', messages => $m, tool_choice => { type => 'function' } }, 400, qr/^tool_choice$/, qr/must name a function/],
    ['response_format unknown type', '/v1/chat/completions', { model => 'demo', messages => $m, response_format => { type => 'yaml' } }, 400, qr/^response_format$/, qr/"yaml"/],
    ['response_format json_schema without schema', '/v1/chat/completions', { model => 'demo', messages => $m, response_format => { type => 'json_schema', json_schema => { name => 'x' } } }, 400, qr/^response_format$/, qr/must be an object/],
    ['thinking bad', '/v1/chat/completions', { model => 'demo', messages => $m, thinking => { type => 'sometimes' } }, 400, qr/^messages$/, qr/thinking/],
    ['prompt over dsv4_max_prompt_tokens', '/v1/chat/completions', { model => 'demo', messages => [{ role => 'user', content => join(' ', ('word') x 800) }] }, 400, qr/^messages$/, qr/limit of 500/],
    ['max_tokens beyond the context', '/big', { model => 'tiny', prompt => [(1) x 1500], max_tokens => 1000, }, 400, qr/^max_tokens$/, qr/maximum context length is 2048/],
    ['prompt beyond the context', '/big', { model => 'tiny', prompt => [(1) x 2100], max_tokens => 10, }, 400, qr/^prompt$/, qr/maximum context length is 2048/],
    ['prompt token out of vocab', '/v1/completions', { model => 'tiny', prompt => [1, 2, 99999999] }, 400, qr/^prompt$/, qr/outside the vocabulary/],
    ['prompt token not an integer', '/v1/completions', { model => 'tiny', prompt => [1, 'x'] }, 400, qr/^prompt$/, qr/integer/],
    ['text prompt without tokenizer', '/v1/completions', { model => 'tiny', prompt => 'hello' }, 400, qr/^prompt$/, qr/no tokenizer/],
    ['empty prompt array', '/v1/completions', { model => 'tiny', prompt => [] }, 400, qr/^prompt$/, qr/prompt/],
    ['missing prompt', '/v1/completions', { model => 'tiny' }, 400, qr/^prompt$/, qr/required/],
);

for my $c (@cases) {
    my ($name, $path, $body, $status, $param, $msg) = @$c;
    my $r = $t->post_json($path, $body);
    is($r->{status}, $status, "$name: status $status");
    my $e = $r->{json} && $r->{json}{error};
    ok(ref $e eq 'HASH' && defined $e->{message} && defined $e->{type}
       && exists $e->{param} && exists $e->{code}, "$name: OpenAI error shape")
        or diag($r->{body});
    like($e->{message} // '', $msg, "$name: message") if $msg;
    like($e->{param} // '', $param, "$name: param") if $param;
    is($e->{type}, $status == 404 ? 'invalid_request_error' : 'invalid_request_error', "$name: type") if $status < 500;
}

# oversized body: declared length, and chunked
my $big = '{"model":"demo","messages":[{"role":"user","content":"' . ('x' x 70000) . '"}]}';
my $r = $t->post_json('/v1/chat/completions', $big);
is($r->{status}, 413, 'oversized body: 413');
is($r->{json}{error}{code}, 'request_too_large', '413 has the error shape');

# the worker survived all of it
is($t->{pid}, $pid, 'same nginx process');
ok(kill(0, $pid), 'nginx is alive');
$r = $t->post_json('/v1/chat/completions', { model => 'demo', messages => $m, max_tokens => 2 });
is($r->{status}, 200, 'and still serves');

# client errors are logged once, at info
my $log = $t->read_file('error.log');
my $n = () = $log =~ /dsv4: 404 The model 'gpt-17' does not exist/g;
is($n, 1, 'a client error is logged once');

$t->finish;
$t->log_clean('no [error] lines for client errors', qr/\[error\]/);

# ---- backpressure: a full queue is a 503 with Retry-After ---------------

my $q = Dsv4Nginx->standard(http => "    dsv4_max_queue 0;\n    dsv4_retry_after 7;\n");
ok($q->run, 'nginx with dsv4_max_queue 0');
$r = $q->post_json('/v1/completions', { model => 'tiny', prompt => [1, 2], max_tokens => 2 });
is($r->{status}, 503, 'queue full: 503');
is($r->{headers}{'retry-after'}, '7', 'Retry-After from dsv4_retry_after');
is($r->{json}{error}{code}, 'overloaded', '503 error code');
like($q->http('GET', '/metrics')->{body}, qr/^dsv4:requests_rejected_total\{model_name="tiny"\} 1$/m,
     'rejection counted');
$q->finish;

done_testing;
