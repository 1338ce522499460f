#!/usr/bin/perl
# POST /v1/completions: text and token-id prompts, several prompts, n,
# logprobs (legacy shape), echo, stop, streaming.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Dsv4Nginx qw(sse_data);

my $t = Dsv4Nginx->standard;
ok($t->run, 'nginx starts');

sub cmpl { $t->post_json('/v1/completions', { @_ }) }

my $r = cmpl(model => 'demo', prompt => 'The capital of France is', max_tokens => 6, temperature => 0);
is($r->{status}, 200, 'text prompt');
my $j = $r->{json};
like($j->{id}, qr/^cmpl-/, 'id');
is($j->{object}, 'text_completion', 'object');
is($j->{choices}[0]{finish_reason}, 'length', 'finish_reason');
ok(length $j->{choices}[0]{text}, 'text');
is($j->{usage}{completion_tokens}, 6, 'completion_tokens');
my $tk = $t->post_json('/tokenize', { model => 'demo', prompt => 'The capital of France is' });
is($j->{usage}{prompt_tokens}, $tk->{json}{count}, 'prompt_tokens == /tokenize count (with BOS)');
my $greedy = $j->{choices}[0]{text};

# token ids give the same result as the text they encode
$r = cmpl(model => 'demo', prompt => $tk->{json}{tokens}, max_tokens => 6, temperature => 0);
is($r->{json}{choices}[0]{text}, $greedy, 'token-id prompt == text prompt');

# several prompts x n
$r = cmpl(model => 'tiny', prompt => [[1, 2, 3], [4, 5]], max_tokens => 3, n => 2, temperature => 1, seed => 5);
is($r->{status}, 200, 'two prompts, n=2');
is(scalar @{ $r->{json}{choices} }, 4, 'four choices');
is($r->{json}{usage}{prompt_tokens}, 5, 'prompt tokens counted once per prompt');
is($r->{json}{usage}{completion_tokens}, 12, 'completion tokens of every choice');

# logprobs, legacy shape
$r = cmpl(model => 'demo', prompt => 'Hello', max_tokens => 4, temperature => 0, logprobs => 2);
my $lp = $r->{json}{choices}[0]{logprobs};
is(scalar @{ $lp->{tokens} }, 4, 'tokens');
is(scalar @{ $lp->{token_logprobs} }, 4, 'token_logprobs');
is(scalar @{ $lp->{top_logprobs} }, 4, 'top_logprobs');
is(scalar keys %{ $lp->{top_logprobs}[0] }, 2, 'two alternatives per token');
is(scalar @{ $lp->{text_offset} }, 4, 'text_offset');
is($lp->{text_offset}[0], 0, 'first offset 0');
ok($lp->{token_logprobs}[0] <= 0, 'logprob <= 0');

# tiny (no tokenizer): token ids spelled as token_id:N
$r = cmpl(model => 'tiny', prompt => [1, 2, 3], max_tokens => 2, logprobs => 1, temperature => 0);
like($r->{json}{choices}[0]{logprobs}{tokens}[0], qr/^token_id:\d+$/, 'no tokenizer: token_id:N');

# echo
$r = cmpl(model => 'demo', prompt => 'Echo me', max_tokens => 3, temperature => 0, echo => JSON::PP::true);
like($r->{json}{choices}[0]{text}, qr/^Echo me/, 'echo prepends the prompt');

# stop
SKIP: {
    skip 'greedy text too short', 2 if length $greedy < 5;
    my $stop = substr($greedy, 2, 2);
    $r = cmpl(model => 'demo', prompt => 'The capital of France is', max_tokens => 6, temperature => 0, stop => $stop);
    is($r->{json}{choices}[0]{text}, substr($greedy, 0, index($greedy, $stop)), 'stop string cuts the text');
    is($r->{json}{choices}[0]{finish_reason}, 'stop', 'finish_reason stop');
}

# streaming
$r = cmpl(model => 'demo', prompt => 'The capital of France is', max_tokens => 6, temperature => 0,
          stream => JSON::PP::true, stream_options => { include_usage => JSON::PP::true });
is($r->{status}, 200, 'stream');
my @ev = sse_data($r->{body});
is(pop @ev, '[DONE]', '[DONE]');
my $u = pop @ev;
is($u->{usage}{completion_tokens}, 6, 'usage chunk');
is($ev[-1]{choices}[0]{finish_reason}, 'length', 'finish chunk');
is(join('', map { $_->{choices}[0]{text} } @ev), $greedy, 'streamed text == non-streamed');
is($ev[0]{object}, 'text_completion', 'chunk object');

$r = cmpl(model => 'demo', prompt => 'Hi', max_tokens => 3, temperature => 0, logprobs => 1,
          stream => JSON::PP::true);
@ev = grep { ref } sse_data($r->{body});
my $n = 0;
$n += scalar @{ $_->{choices}[0]{logprobs}{tokens} || [] } for @ev;
is($n, 3, 'streamed logprobs cover every token');

$t->finish;
$t->log_clean('no [error] lines', qr/\[error\]/);
done_testing;
