#!/usr/bin/perl
# POST /v1/messages (Anthropic Messages API): response shape, usage, stop
# reasons, thinking blocks, tool history, streaming event sequence, errors
# in Anthropic's shape.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Dsv4Nginx qw(sse_data);

my $t = Dsv4Nginx->standard;
ok($t->run, 'nginx starts');

sub msg { $t->post_json('/v1/messages', { model => 'demo', @_ }, 'anthropic-version' => '2023-06-01') }

my $r = msg(max_tokens => 6, temperature => 0, system => 'Be brief.',
            messages => [{ role => 'user', content => 'Hello' }]);
is($r->{status}, 200, 'messages 200');
my $j = $r->{json};
like($j->{id}, qr/^msg_/, 'id');
is($j->{type}, 'message', 'type');
is($j->{role}, 'assistant', 'role');
is($j->{model}, 'demo', 'model');
is($j->{stop_reason}, 'max_tokens', 'stop_reason max_tokens');
ok(exists $j->{stop_sequence} && !defined $j->{stop_sequence}, 'stop_sequence null');
is($j->{content}[0]{type}, 'text', 'a text block');
is($j->{usage}{output_tokens}, 6, 'output_tokens');
ok($j->{usage}{input_tokens} > 3, 'input_tokens');
my $greedy = $j->{content}[0]{text};

# same conversation in OpenAI form gives the same prompt length and text
my $o = $t->post_json('/v1/chat/completions', { model => 'demo', max_tokens => 6, temperature => 0,
    messages => [{ role => 'system', content => 'Be brief.' }, { role => 'user', content => 'Hello' }] });
is($j->{usage}{input_tokens}, $o->{json}{usage}{prompt_tokens}, 'same prompt as the OpenAI form');
is($greedy, $o->{json}{choices}[0]{message}{content}, 'same greedy text');

# content blocks, system blocks
$r = msg(max_tokens => 2, system => [{ type => 'text', text => 'Be brief.' }],
         messages => [{ role => 'user', content => [{ type => 'text', text => 'Hello' }] }], temperature => 0);
is($r->{json}{usage}{input_tokens}, $j->{usage}{input_tokens}, 'block form == string form');

# stop_sequences
SKIP: {
    skip 'greedy text too short', 3 if length $greedy < 5;
    my $stop = substr($greedy, 2, 2);
    $r = msg(max_tokens => 6, temperature => 0, system => 'Be brief.', stop_sequences => [$stop],
             messages => [{ role => 'user', content => 'Hello' }]);
    is($r->{json}{stop_reason}, 'stop_sequence', 'stop_reason stop_sequence');
    is($r->{json}{stop_sequence}, $stop, 'stop_sequence names the string');
    is($r->{json}{content}[0]{text}, substr($greedy, 0, index($greedy, $stop)), 'text cut before it');
}

# thinking
$r = msg(max_tokens => 4, temperature => 0, thinking => { type => 'enabled', budget_tokens => 1024 },
         messages => [{ role => 'user', content => 'Hello' }]);
is($r->{status}, 200, 'thinking enabled');
is($r->{json}{content}[0]{type}, 'thinking', 'a thinking block first');
ok(exists $r->{json}{content}[0]{signature}, 'thinking block has a signature field');

# tool use history and tools
my $tools = [{ name => 'get_weather', description => 'Weather for a city',
               input_schema => { type => 'object', properties => { city => { type => 'string' } } } }];
$r = msg(max_tokens => 2, temperature => 0, tools => $tools, messages => [
    { role => 'user', content => 'Weather in Paris?' },
    { role => 'assistant', content => [{ type => 'text', text => 'Checking.' },
        { type => 'tool_use', id => 'toolu_1', name => 'get_weather', input => { city => 'Paris' } }] },
    { role => 'user', content => [{ type => 'tool_result', tool_use_id => 'toolu_1', content => '21C' }] }]);
is($r->{status}, 200, 'tool_use / tool_result history');

# streaming
$r = msg(max_tokens => 6, temperature => 0, stream => JSON::PP::true, system => 'Be brief.',
         messages => [{ role => 'user', content => 'Hello' }]);
is($r->{status}, 200, 'stream 200');
like($r->{headers}{'content-type'}, qr{^text/event-stream}, 'event stream');
my @ev = sse_data($r->{body}, 1);
my @names = map { $_->[0] } @ev;
is($names[0], 'message_start', 'message_start first');
is($names[1], 'ping', 'then ping');
is($names[-1], 'message_stop', 'message_stop last');
is($names[-2], 'message_delta', 'message_delta before it');
ok(!grep({ $_->[0] ne ($_->[1]{type} // '') } @ev), 'event name == data.type');
is($ev[0][1]{message}{usage}{input_tokens}, $j->{usage}{input_tokens}, 'message_start usage');
is($ev[-2][1]{delta}{stop_reason}, 'max_tokens', 'stop_reason in message_delta');
is($ev[-2][1]{usage}{output_tokens}, 6, 'output_tokens in message_delta');
my @starts = grep { $_->[0] eq 'content_block_start' } @ev;
my @stops = grep { $_->[0] eq 'content_block_stop' } @ev;
is(scalar @starts, scalar @stops, 'every block is closed');
is(join('', map { $_->[1]{delta}{text} // '' } grep { $_->[0] eq 'content_block_delta' } @ev),
   $greedy, 'streamed text == non-streamed');

$r = msg(max_tokens => 3, temperature => 0, stream => JSON::PP::true,
         thinking => { type => 'enabled', budget_tokens => 100 }, messages => [{ role => 'user', content => 'Hi' }]);
@ev = sse_data($r->{body}, 1);
ok((grep { $_->[0] eq 'content_block_delta' && $_->[1]{delta}{type} eq 'thinking_delta' } @ev),
   'thinking streams as thinking_delta');

# errors, Anthropic shape
for my $c (
    [ 'max_tokens missing', { messages => [{ role => 'user', content => 'x' }] }, 400, 'invalid_request_error' ],
    [ 'bad role', { max_tokens => 5, messages => [{ role => 'system', content => 'x' }] }, 400, 'invalid_request_error' ],
    [ 'image block', { max_tokens => 5, messages => [{ role => 'user', content => [{ type => 'image', source => {} }] }] }, 400, 'invalid_request_error' ],
    [ 'unknown model', { model => 'claude-9', max_tokens => 5, messages => [{ role => 'user', content => 'x' }] }, 404, 'not_found_error' ],
    [ 'no messages', { max_tokens => 5, messages => [] }, 400, 'invalid_request_error' ],
) {
    $r = $t->post_json('/v1/messages', { model => 'demo', %{ $c->[1] } });
    is($r->{status}, $c->[2], "$c->[0]: $c->[2]");
    is($r->{json}{type}, 'error', "$c->[0]: type error");
    is($r->{json}{error}{type}, $c->[3], "$c->[0]: $c->[3]");
}

$t->finish;
done_testing;
