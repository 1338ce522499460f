#!/usr/bin/perl
# /metrics: counters follow the requests served (prompt and generation
# tokens equal the usage the clients saw), finish reasons, histograms,
# error counts; several workers report into one shared zone.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Dsv4Nginx;

my $t = Dsv4Nginx->standard(workers => 2);
ok($t->run, 'nginx with 2 workers');

sub mv { $t->metric(@_) }

my ($p0, $g0) = (mv('dsv4:prompt_tokens_total', 'demo'), mv('dsv4:generation_tokens_total', 'demo'));
my ($len0) = mv('dsv4:request_success_total', 'model_name="demo",finished_reason="length"');
my $e2e0 = mv('dsv4:e2e_request_latency_seconds_count', 'demo');

my ($pt, $ct) = (0, 0);
for my $i (1 .. 6) {
    my $r = $t->post_json('/v1/completions', { model => 'demo', prompt => "Count $i", max_tokens => 3 + $i,
                                               stream => ($i % 2 ? JSON::PP::true : JSON::PP::false),
                                               stream_options => ($i % 2 ? { include_usage => JSON::PP::true } : undef) });
    is($r->{status}, 200, "request $i");
    my $u;
    if ($i % 2) {
        ($u) = grep { ref && $_->{usage} } Dsv4Nginx::sse_data($r->{body});
        $u = $u->{usage};
    } else {
        $u = $r->{json}{usage};
    }
    $pt += $u->{prompt_tokens};
    $ct += $u->{completion_tokens};
}

is(mv('dsv4:prompt_tokens_total', 'demo') - $p0, $pt, 'prompt_tokens_total == sum of usage.prompt_tokens');
is(mv('dsv4:generation_tokens_total', 'demo') - $g0, $ct, 'generation_tokens_total == sum of usage.completion_tokens');
is(mv('dsv4:request_success_total', 'model_name="demo",finished_reason="length"') - $len0, 6,
   'six requests finished by length');
is(mv('dsv4:e2e_request_latency_seconds_count', 'demo') - $e2e0, 6, 'e2e histogram observed each');
ok(mv('dsv4:time_to_first_token_seconds_count', 'demo') >= 6, 'TTFT histogram observed');
ok(mv('dsv4:inter_token_latency_seconds_count', 'demo') > 0, 'ITL histogram observed');
is(mv('dsv4:num_requests_running', 'demo'), 0, 'nothing running afterwards');
is(mv('dsv4:num_requests_waiting', 'demo'), 0, 'nothing waiting');

my $body = $t->http('GET', '/metrics')->{body};
my @b = $body =~ /^dsv4:e2e_request_latency_seconds_bucket\{model_name="demo",le="[^"]+"\} (\d+)$/mg;
is_deeply([@b], [sort { $a <=> $b } @b], 'buckets are cumulative');
is($b[-1], mv('dsv4:e2e_request_latency_seconds_count', 'demo'), '+Inf bucket == count');
my %types = $body =~ /^# TYPE (\S+) (\S+)$/mg;
is($types{'dsv4:prompt_tokens_total'}, 'counter', 'counter TYPE');
is($types{'dsv4:time_to_first_token_seconds'}, 'histogram', 'histogram TYPE');

$t->post_json('/v1/chat/completions', { model => 'nope', messages => [] });
like($t->http('GET', '/metrics')->{body}, qr/^dsv4:http_errors_total\{api="chat_completions",code="404"\} 1$/m,
     'errors counted by API and status');

$t->finish;
done_testing;
