#!/usr/bin/perl
# Client disconnect cancels the engine's work: streaming or not, during
# prefill, during decode and while queued, the sequence is gone (metrics:
# running and waiting back to 0) within a second of the client closing.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use Dsv4Nginx;

# the scalar reference backend keeps prefill and decode slow enough to cut
# them mid-way whatever the machine
my $h2port = Dsv4Nginx::free_port();
my $t = Dsv4Nginx->standard(http => "    dsv4_backend scalar;\n    dsv4_prefill_chunk 32;\n"
                                  . "    dsv4_max_seqs 1;\n    dsv4_max_batch_tokens 32;\n",
                            server => "    }\n    server {\n        listen 127.0.0.1:$h2port http2;\n"
                                    . "        location = /v1/completions { dsv4_api completions; }\n");
ok($t->run, 'nginx starts');
my $S = Dsv4Nginx::time_scale();      # 1, except under valgrind

sub load {
    my $run = $t->metric('dsv4:num_requests_running', 'model_name="demo"') // -1;
    my $wait = $t->metric('dsv4:num_requests_waiting', 'model_name="demo"') // -1;
    return ($run, $wait);
}

# Polls until nothing runs or waits; returns the seconds it took.
sub idle_after {
    my $t0 = time;
    while (time - $t0 < 5 * $S) {
        my ($run, $wait) = load();
        return time - $t0 if $run == 0 && $wait == 0;
        sleep 0.02;
    }
    return 99 * $S;
}

sub running_soon {
    my $t0 = time;
    while (time - $t0 < 5 * $S) {
        my ($run) = load();
        return 1 if $run == 1;
        sleep 0.01;
    }
    return 0;
}

my $long_prompt = [map { 1000 + $_ } 1 .. 3900];     # ~1.5 s of prefill
my $json = Dsv4Nginx::json();

sub start_req {
    my (%p) = @_;
    return $t->start('POST', '/v1/completions', $json->encode({ model => 'demo', %p }),
                     'Content-Type' => 'application/json');
}

my $aborts0 = $t->metric('dsv4:request_success_total', 'finished_reason="abort"') // 0;
my $gen0 = $t->metric('dsv4:generation_tokens_total', 'model_name="demo"') // 0;

# 1. streaming, during decode
my $s = start_req(prompt => [1, 2, 3], max_tokens => 3000, stream => JSON::PP::true);
my $buf = $t->read_until($s, sub { my @n = $_[0] =~ /data: \{/g; @n >= 5 }, 10 * $S);
my @n = $buf =~ /data: \{/g;
ok(@n >= 5, 'stream: tokens are flowing');
close $s;
my $dt = idle_after();
cmp_ok($dt, '<', 1.0 * $S, sprintf('stream/decode: sequence freed %.3fs after close', $dt));

# 2. non-streaming, during decode
$s = start_req(prompt => [1, 2, 3], max_tokens => 3000);
ok(running_soon(), 'non-stream: running');
sleep 0.3;
close $s;
$dt = idle_after();
cmp_ok($dt, '<', 1.0 * $S, sprintf('non-stream/decode: sequence freed %.3fs after close', $dt));

# 3. streaming, during prefill
$s = start_req(prompt => $long_prompt, max_tokens => 10, stream => JSON::PP::true);
$buf = $t->read_until($s, sub { $_[0] =~ /\r\n\r\n/ }, 5);
like($buf, qr/^HTTP\/1.1 200/, 'stream: headers sent at once');
ok(running_soon(), 'stream/prefill: running');
sleep 0.2;
$buf = $t->read_until($s, sub { 0 }, 0.05);
unlike($buf, qr/"text"/, 'still in prefill: no token yet') or diag($buf);
close $s;
$dt = idle_after();
cmp_ok($dt, '<', 1.0 * $S, sprintf('stream/prefill: sequence freed %.3fs after close', $dt));

# 4. non-streaming, during prefill
$s = start_req(prompt => $long_prompt, max_tokens => 10);
ok(running_soon(), 'non-stream/prefill: running');
sleep 0.2;
close $s;
$dt = idle_after();
cmp_ok($dt, '<', 1.0 * $S, sprintf('non-stream/prefill: sequence freed %.3fs after close', $dt));

# 5. queued behind another request (dsv4_max_seqs 1)
my $first = start_req(prompt => [1, 2, 3], max_tokens => 3000, stream => JSON::PP::true);
$t->read_until($first, sub { $_[0] =~ /"text"/ }, 10 * $S);
my $second = start_req(prompt => [4, 5, 6], max_tokens => 3000, stream => JSON::PP::true);
my $t0 = time;
my ($run, $wait) = (0, 0);
while (time - $t0 < 5 * $S) { ($run, $wait) = load(); last if $wait == 1; sleep 0.01; }
is_deeply([$run, $wait], [1, 1], 'one running, one waiting');
close $second;
$t0 = time;
while (time - $t0 < 2 * $S) { ($run, $wait) = load(); last if $wait == 0; sleep 0.01; }
is($wait, 0, 'the queued request left the queue');
cmp_ok(time - $t0, '<', 1.0 * $S, 'within a second');
close $first;
$dt = idle_after();
cmp_ok($dt, '<', 1.0 * $S, 'and the running one was freed too');

# 6. HTTP/2 (h2c), streaming, during decode: curl is killed mid-stream
SKIP: {
    skip 'no curl', 2 unless `curl --version 2>/dev/null` =~ /HTTP2/;
    my $out = `timeout @{[1 * $S]} curl -s --http2-prior-knowledge -N http://127.0.0.1:$h2port/v1/completions -d '{"model":"demo","prompt":[1,2,3],"max_tokens":3000,"stream":true}'`;
    like($out, qr/^data: \{/, 'HTTP/2 stream was flowing');
    $dt = idle_after();
    cmp_ok($dt, '<', 1.0 * $S, sprintf('HTTP/2: sequence freed %.3fs after the client went away', $dt));
}

my $aborts = $t->metric('dsv4:request_success_total', 'finished_reason="abort"');
cmp_ok($aborts - $aborts0, '>=', 6, 'every cut request counted as aborted');
my $gen = $t->metric('dsv4:generation_tokens_total', 'model_name="demo"');
cmp_ok($gen - $gen0, '<', 3000, 'the engine stopped generating for the cut requests');

# the worker is fine afterwards
my $r = $t->post_json('/v1/completions', { model => 'demo', prompt => [1, 2], max_tokens => 3 });
is($r->{status}, 200, 'serves after the disconnects');
is($r->{json}{usage}{completion_tokens}, 3, 'complete reply');

$t->finish;
done_testing;
