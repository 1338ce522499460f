#!/usr/bin/perl
# POST /v1/chat/completions: response shape, usage equal to token counts,
# finish_reason, n choices, seeds, greedy determinism, stop strings,
# thinking mode, logprobs, and SSE streaming (framing, role chunk, finish
# chunk, include_usage, [DONE], same text as the non-streaming reply).

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Dsv4Nginx qw(sse_data);

my $t = Dsv4Nginx->standard;
ok($t->run, 'nginx starts');

my @msgs = ({ role => 'system', content => 'Be brief.' },
            { role => 'user', content => 'Hello, who are you?' });

sub chat { $t->post_json('/v1/chat/completions', { model => 'demo', messages => \@msgs, @_ }) }

# ---- non-streaming --------------------------------------------------------

my $r = chat(max_tokens => 8, temperature => 0);
is($r->{status}, 200, 'chat 200');
my $j = $r->{json};
like($j->{id}, qr/^chatcmpl-[0-9a-f]{24}$/, 'id');
is($j->{object}, 'chat.completion', 'object');
is($j->{model}, 'demo', 'model echoed');
ok($j->{created} > 1600000000, 'created is a timestamp');
is(scalar @{ $j->{choices} }, 1, 'one choice');
my $c = $j->{choices}[0];
is($c->{index}, 0, 'choice index');
is($c->{message}{role}, 'assistant', 'role');
ok(defined $c->{message}{content} && length $c->{message}{content}, 'content');
ok(!exists $c->{message}{reasoning_content}, 'no reasoning_content in chat mode');
is($c->{finish_reason}, 'length', 'finish_reason length at max_tokens');
is($j->{usage}{completion_tokens}, 8, 'completion_tokens == max_tokens');
is($j->{usage}{total_tokens}, $j->{usage}{prompt_tokens} + 8, 'total_tokens');
is($j->{usage}{prompt_tokens_details}{cached_tokens}, 0, 'cached_tokens');

my $tk = $t->post_json('/tokenize', { model => 'demo', messages => \@msgs });
is($tk->{status}, 200, '/tokenize the same messages');
is($j->{usage}{prompt_tokens}, $tk->{json}{count}, 'prompt_tokens == tokenized prompt length');

my $greedy = $c->{message}{content};
$r = chat(max_tokens => 8, temperature => 0);
is($r->{json}{choices}[0]{message}{content}, $greedy, 'greedy is deterministic');

# max_completion_tokens is the newer name
$r = chat(max_completion_tokens => 3, temperature => 0);
is($r->{json}{usage}{completion_tokens}, 3, 'max_completion_tokens honoured');

# ---- seeds and n --------------------------------------------------------

my $a = chat(max_tokens => 10, temperature => 1.0, seed => 42)->{json}{choices}[0]{message}{content};
my $b = chat(max_tokens => 10, temperature => 1.0, seed => 42)->{json}{choices}[0]{message}{content};
my $d = chat(max_tokens => 10, temperature => 1.0, seed => 4242)->{json}{choices}[0]{message}{content};
is($a, $b, 'same seed, same completion');
isnt($a, $d, 'another seed, another completion');

$r = chat(max_tokens => 5, temperature => 1.0, n => 3, seed => 7);
is($r->{status}, 200, 'n=3');
is(scalar @{ $r->{json}{choices} }, 3, 'three choices');
is_deeply([ map { $_->{index} } @{ $r->{json}{choices} } ], [0, 1, 2], 'choice indexes');
is($r->{json}{usage}{completion_tokens}, 15, 'usage counts every choice');
my %distinct = map { $_->{message}{content} => 1 } @{ $r->{json}{choices} };
ok(keys %distinct > 1, 'choices are independent samples');
my $r2 = chat(max_tokens => 5, temperature => 1.0, n => 3, seed => 7);
is_deeply([ map { $_->{message}{content} } @{ $r2->{json}{choices} } ],
          [ map { $_->{message}{content} } @{ $r->{json}{choices} } ],
          'n choices with a seed are reproducible');

# ---- stop strings ---------------------------------------------------------

my $long = chat(max_tokens => 16, temperature => 0)->{json}{choices}[0]{message}{content};
SKIP: {
    skip 'greedy text too short for a stop string', 3 if length $long < 8;
    my $stop = substr($long, 4, 3);
    my $want = substr($long, 0, index($long, $stop));
    $r = chat(max_tokens => 16, temperature => 0, stop => [$stop]);
    is($r->{json}{choices}[0]{message}{content}, $want, 'text ends before the stop string');
    is($r->{json}{choices}[0]{finish_reason}, 'stop', 'finish_reason stop');
    ok($r->{json}{usage}{completion_tokens} < 16, 'stopped early');
}

# ---- thinking -------------------------------------------------------------

$r = $t->post_json('/v1/chat/completions',
                   { model => 'deepseek-reasoner', messages => \@msgs, max_tokens => 6, temperature => 0 });
is($r->{status}, 200, 'deepseek-reasoner alias');
$c = $r->{json}{choices}[0];
ok(defined $c->{message}{reasoning_content}, 'reasoning_content present in thinking mode');
is($r->{json}{model}, 'deepseek-reasoner', 'the alias is echoed');
ok($r->{json}{usage}{completion_tokens_details}{reasoning_tokens} > 0, 'reasoning_tokens counted');
ok($r->{json}{usage}{completion_tokens_details}{reasoning_tokens}
   <= $r->{json}{usage}{completion_tokens}, 'reasoning_tokens <= completion_tokens');

$r = $t->post_json('/v1/chat/completions',
                   { model => 'deepseek-reasoner', messages => \@msgs, max_tokens => 4,
                     temperature => 0, thinking => { type => 'disabled' } });
ok(!exists $r->{json}{choices}[0]{message}{reasoning_content}, 'thinking disabled wins over the alias');
is($r->{json}{usage}{completion_tokens_details}{reasoning_tokens}, 0, 'no reasoning tokens');

$r = chat(max_tokens => 4, temperature => 0, reasoning_effort => 'high');
ok(defined $r->{json}{choices}[0]{message}{reasoning_content}, 'reasoning_effort turns thinking on');

# ---- logprobs -------------------------------------------------------------

$r = chat(max_tokens => 5, temperature => 0, logprobs => JSON::PP::true, top_logprobs => 3);
is($r->{status}, 200, 'logprobs request');
my $lp = $r->{json}{choices}[0]{logprobs}{content};
is(scalar @$lp, 5, 'one logprobs entry per token');
my $e = $lp->[0];
ok(exists $e->{token} && ref $e->{bytes} eq 'ARRAY', 'entry has token and bytes');
ok($e->{logprob} <= 0, 'logprob <= 0');
is(scalar @{ $e->{top_logprobs} }, 3, 'top_logprobs has 3 alternatives');
ok($e->{top_logprobs}[0]{logprob} >= $e->{top_logprobs}[1]{logprob}, 'alternatives sorted');
cmp_ok(abs($e->{logprob} - $e->{top_logprobs}[0]{logprob}), '<', 1e-4,
       'greedy token is the top alternative');
is($r->{json}{choices}[0]{message}{content},
   join('', map { $_->{token} } @$lp) =~ /\x{fffd}/ ? $r->{json}{choices}[0]{message}{content}
                                                   : join('', map { $_->{token} } @$lp),
   'tokens spell the content');

# ---- tools in the request are rendered ------------------------------------

my $tools = [{ type => 'function', function => { name => 'get_weather', description => 'Weather',
               parameters => { type => 'object', properties => { city => { type => 'string' } } } } }];
$r = chat(max_tokens => 3, temperature => 0, tools => $tools);
is($r->{status}, 200, 'request with tools');
ok($r->{json}{usage}{prompt_tokens} > $j->{usage}{prompt_tokens}, 'tools are rendered into the prompt');

$r = $t->post_json('/v1/chat/completions', { model => 'demo', max_tokens => 2, tools => $tools, messages => [
    { role => 'user', content => 'Weather in Paris?' },
    { role => 'assistant', content => '', tool_calls => [{ id => 'call_1', type => 'function',
        function => { name => 'get_weather', arguments => '{"city":"Paris"}' } }] },
    { role => 'tool', tool_call_id => 'call_1', content => '{"temp":21}' } ] });
is($r->{status}, 200, 'tool call round trip in the history');

# ---- streaming ------------------------------------------------------------

$r = chat(max_tokens => 8, temperature => 0, stream => JSON::PP::true);
is($r->{status}, 200, 'stream 200');
like($r->{headers}{'content-type'}, qr{^text/event-stream}, 'text/event-stream');
is($r->{headers}{'x-accel-buffering'}, 'no', 'X-Accel-Buffering: no');
is($r->{headers}{'transfer-encoding'}, 'chunked', 'chunked, no content length');
ok($r->{body} =~ /\A(data: [^\n]+\n\n)+\z/, 'every event is one data: line and a blank line');
my @ev = sse_data($r->{body});
is($ev[-1], '[DONE]', 'ends with [DONE]');
pop @ev;
ok(!grep({ $_->{_bad} } @ev), 'every payload is JSON');
is($ev[0]{choices}[0]{delta}{role}, 'assistant', 'first chunk carries the role');
is($ev[0]{object}, 'chat.completion.chunk', 'chunk object');
my %ids = map { $_->{id} => 1 } @ev;
is(scalar keys %ids, 1, 'one id for all chunks');
ok(!grep({ exists $_->{usage} } @ev), 'no usage without include_usage');
is($ev[-1]{choices}[0]{finish_reason}, 'length', 'last chunk has the finish_reason');
is_deeply($ev[-1]{choices}[0]{delta}, {}, 'finish chunk has an empty delta');
my $text = join '', map { $_->{choices}[0]{delta}{content} // '' } @ev;
is($text, $greedy, 'streamed text equals the non-streaming text');

$r = chat(max_tokens => 4, temperature => 0, stream => JSON::PP::true,
          stream_options => { include_usage => JSON::PP::true });
@ev = sse_data($r->{body});
is(pop @ev, '[DONE]', '[DONE] after the usage chunk');
my $u = pop @ev;
is_deeply($u->{choices}, [], 'usage chunk has empty choices');
is($u->{usage}{completion_tokens}, 4, 'usage chunk counts tokens');
ok((grep { exists $_->{usage} && !defined $_->{usage} } @ev) == @ev, 'earlier chunks have usage: null');

$r = chat(max_tokens => 3, temperature => 1, n => 2, seed => 3, stream => JSON::PP::true);
@ev = grep { ref } sse_data($r->{body});
my %fin = map { ($_->{choices}[0]{finish_reason} ? ($_->{choices}[0]{index} => 1) : ()) } @ev;
is_deeply(\%fin, { 0 => 1, 1 => 1 }, 'n=2 stream finishes both choices');

$r = $t->post_json('/v1/chat/completions', { model => 'deepseek-reasoner', messages => \@msgs,
                   max_tokens => 4, temperature => 0, stream => JSON::PP::true });
@ev = grep { ref } sse_data($r->{body});
ok((grep { defined $_->{choices}[0]{delta}{reasoning_content} } @ev), 'reasoning streams as reasoning_content');

$t->finish;
$t->log_clean('no [error] lines', qr/\[error\]/);
done_testing;
