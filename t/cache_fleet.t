#!/usr/bin/perl
# Prefix cache shared through Redis by two "servers" (docs/cache.md): two
# nginx instances on different ports share one redis-server; a long prompt
# sent to A is reused by B for the same prompt plus a new turn.  B reports
# cached tokens >= the block-aligned prefix and produces the same greedy
# output as a cold run (a third instance without the cache).

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use Dsv4Nginx;
use Dsv4Redis;

plan skip_all => 'redis-server not installed' unless Dsv4Redis->available;

my $B = 32;     # the demo model's compress ratios are 4 and 32

my $redis = Dsv4Redis->new;
ok($redis->start, 'redis-server started on 127.0.0.1:' . $redis->port)
    or BAIL_OUT('no redis-server');

my $cache = "    dsv4_cache on;\n"
          . "    dsv4_cache_redis 127.0.0.1:" . $redis->port . ";\n"
          . "    dsv4_cache_key_prefix t-fleet:;\n"
          . "    dsv4_cache_block $B;\n"
          . "    dsv4_cache_ttl 600;\n";

my $a = Dsv4Nginx->standard(http => $cache);
my $b = Dsv4Nginx->standard(http => $cache);
my $cold = Dsv4Nginx->standard();
ok($a->run, 'server A');
ok($b->run, 'server B');
ok($cold->run, 'cold server (no cache)');

# a long prompt (token ids: exact prefixes), then it plus a new turn
my @long = map { 100 + ($_ * 7919) % 60000 } 1 .. 5 * $B + 11;
my @turn = (@long, map { 200 + ($_ * 104729) % 50000 } 1 .. 45);
my $aligned = int(@long / $B) * $B;

sub cmpl {
    my ($t, $prompt) = @_;
    return $t->post_json('/v1/completions', { model => 'demo', prompt => $prompt,
                                              max_tokens => 12, temperature => 0 });
}

sub wait_written {
    my ($t, $min) = @_;
    my $deadline = time + 20;
    while (time < $deadline) {
        my $v = $t->metric('dsv4:cache_written_values_total', 'tier="redis"') || 0;
        return $v if $v >= $min;
        sleep 0.05;
    }
    return 0;
}

my $ra = cmpl($a, \@long);
is($ra->{status}, 200, 'A answers the long prompt');
is($ra->{json}{usage}{prompt_tokens_details}{cached_tokens}, 0, 'A: nothing cached yet');
ok(wait_written($a, int(@long / $B)), 'A wrote its blocks to Redis')
    or diag($a->read_file('error.log'));
my $keys = $redis->cli('DBSIZE');
ok($keys && $keys =~ /^(\d+)/ && $1 > 0, "Redis holds the entries ($1 keys)");

my $rb = cmpl($b, \@turn);
is($rb->{status}, 200, 'B answers the prompt plus a new turn');
my $cached = $rb->{json}{usage}{prompt_tokens_details}{cached_tokens};
cmp_ok($cached, '>=', $aligned, "B reused >= the aligned prefix ($cached >= $aligned)");
cmp_ok($cached % $B, '==', 0, 'on a block boundary');
cmp_ok($b->metric('dsv4:cache_hit_tokens_total', 'tier="redis"'), '>=', $aligned,
       'B counts the hit tokens under tier="redis"');
cmp_ok($b->metric('dsv4:cache_read_bytes_total', 'tier="redis"'), '>', 0, 'bytes read');
cmp_ok($b->metric('dsv4:cache_redis_latency_seconds_count'), '>', 0,
       'Redis latency histogram counts');

my $rc = cmpl($cold, \@turn);
is($rc->{status}, 200, 'cold run');
is($rc->{json}{usage}{prompt_tokens_details}{cached_tokens}, 0, 'cold: nothing cached');
is($rb->{json}{choices}[0]{text}, $rc->{json}{choices}[0]{text},
   'B (restored prefix) and the cold run give the same greedy output');
is($rb->{json}{usage}{completion_tokens}, $rc->{json}{usage}{completion_tokens},
   'same number of tokens');

# the same prompt again on A: the memory tier now
my $ra2 = cmpl($a, \@long);
cmp_ok($ra2->{json}{usage}{prompt_tokens_details}{cached_tokens}, '>=',
       $aligned - ($aligned == @long ? $B : 0), 'A re-serves the prompt from its cache');
is($ra2->{json}{choices}[0]{text}, $ra->{json}{choices}[0]{text}, 'with the same output');

# chat: a long system prompt, then the conversation continued on B
my $sys = join(' ', map { "rule $_: be concise and exact." } 1 .. 40);
my @msgs = ({ role => 'system', content => $sys }, { role => 'user', content => 'Hello there' });
my $ca = $a->post_json('/v1/chat/completions', { model => 'demo', messages => \@msgs,
                                                 max_tokens => 6, temperature => 0 });
is($ca->{status}, 200, 'chat on A');
my $pa = $ca->{json}{usage}{prompt_tokens};
wait_written($a, 1);
sleep 0.3;
my @msgs2 = (@msgs, { role => 'assistant', content => 'Hi.' },
             { role => 'user', content => 'And now something else entirely' });
my $body = { model => 'demo', messages => \@msgs2, max_tokens => 6, temperature => 0 };
my $cb = $b->post_json('/v1/chat/completions', $body);
is($cb->{status}, 200, 'chat continued on B');
cmp_ok($cb->{json}{usage}{prompt_tokens_details}{cached_tokens}, '>=', $B,
       'B reuses the system prompt\'s blocks (' . $cb->{json}{usage}{prompt_tokens_details}{cached_tokens}
       . " of $pa)");
my $cc = $cold->post_json('/v1/chat/completions', $body);
is($cb->{json}{choices}[0]{message}{content}, $cc->{json}{choices}[0]{message}{content},
   'same greedy reply as cold');

# anthropic usage
my $m = $b->post_json('/v1/messages', { model => 'demo', max_tokens => 4, system => $sys,
                                        messages => [{ role => 'user', content => 'Hello there' }] });
is($m->{status}, 200, 'messages on B');
cmp_ok($m->{json}{usage}{cache_read_input_tokens}, '>', 0, 'cache_read_input_tokens');

# streaming: the usage chunk and Anthropic's final message_delta
my $sr = $b->post_json('/v1/completions', { model => 'demo', prompt => \@turn, max_tokens => 3,
                                            temperature => 0, stream => JSON::PP::true,
                                            stream_options => { include_usage => JSON::PP::true } });
my ($u) = grep { ref $_ && $_->{usage} } Dsv4Nginx::sse_data($sr->{body});
cmp_ok($u && $u->{usage}{prompt_tokens_details}{cached_tokens}, '>=', $aligned,
       'stream: cached_tokens in the usage chunk');
my $ms = $b->post_json('/v1/messages', { model => 'demo', max_tokens => 3, system => $sys,
                                         stream => JSON::PP::true,
                                         messages => [{ role => 'user', content => 'Hello there' }] });
my ($md) = grep { $_->[0] eq 'message_delta' } Dsv4Nginx::sse_data($ms->{body}, 1);
cmp_ok($md && $md->[1]{usage}{cache_read_input_tokens}, '>', 0,
       'stream: cache_read_input_tokens in message_delta');
is($md && $md->[1]{usage}{input_tokens} + $md->[1]{usage}{cache_read_input_tokens},
   $m->{json}{usage}{input_tokens} + $m->{json}{usage}{cache_read_input_tokens},
   'input_tokens + cache_read_input_tokens = the prompt');

my @dp = map { 300 + ($_ * 6007) % 60000 } 1 .. 4 * $B + 3;
my $cold_dp = cmpl($cold, [@dp, 5, 6, 7]);

for ([A => $a], [B => $b], [cold => $cold]) {
    $_->[1]->finish;
}
unlike($a->read_file('error.log') . $b->read_file('error.log'), qr/\[warn\].*cache/,
       'no cache warnings on the happy path');

# restart: the disk tier serves a prefix after nginx restarts with Redis
# stopped (and B's memory tier gone with its process)
my $kv = $b->dir . '/kv';
my $dconf = $cache . "    dsv4_cache_disk $kv max=64m;\n";
my $d = Dsv4Nginx->standard(http => $dconf);
ok($d->run, 'server D with a disk tier');
my $rd = cmpl($d, \@dp);
is($rd->{status}, 200, 'D answers');
my $deadline = time + 20;
sleep 0.05 while time < $deadline
    && ($d->metric('dsv4:cache_written_values_total', 'tier="disk"') || 0) < 4;
cmp_ok($d->metric('dsv4:cache_written_values_total', 'tier="disk"'), '>=', 4, 'D wrote to disk');
$d->finish;
$redis->stop;
my $d2 = Dsv4Nginx->standard(http => $dconf);
ok($d2->run, 'D restarted, Redis stopped');
my $rd2 = cmpl($d2, [@dp, 5, 6, 7]);
is($rd2->{status}, 200, 'answered after the restart');
cmp_ok($rd2->{json}{usage}{prompt_tokens_details}{cached_tokens}, '>=', 4 * $B,
       'the prefix came from the disk tier');
cmp_ok($d2->metric('dsv4:cache_hit_tokens_total', 'tier="disk"'), '>=', 4 * $B,
       'counted under tier="disk"');
is($rd2->{json}{choices}[0]{text}, $cold_dp->{json}{choices}[0]{text}, 'same output as cold');
$d2->finish;

# dsv4_cache_scope key: only requests with the same bearer token share
my $e = Dsv4Nginx->standard(http => "    dsv4_cache on;\n    dsv4_cache_block $B;\n"
                                  . "    dsv4_cache_scope key;\n");
ok($e->run, 'server E with dsv4_cache_scope key');
my @ep = map { 400 + ($_ * 3001) % 60000 } 1 .. 3 * $B + 1;
my %alice = (Authorization => 'Bearer sk-alice');
my $r1 = $e->post_json('/v1/completions', { model => 'demo', prompt => \@ep, max_tokens => 2,
                                            temperature => 0 }, %alice);
is($r1->{status}, 200, 'alice');
sleep 0.05 while ($e->metric('dsv4:cache_written_values_total', 'tier="memory"') || 0) < 3
    && time < $deadline + 20;
my $r2 = $e->post_json('/v1/completions', { model => 'demo', prompt => \@ep, max_tokens => 2,
                                            temperature => 0 },
                       Authorization => 'Bearer sk-bob');
is($r2->{json}{usage}{prompt_tokens_details}{cached_tokens}, 0, 'bob does not see alice\'s prefix');
my $r3 = $e->post_json('/v1/completions', { model => 'demo', prompt => \@ep, max_tokens => 2,
                                            temperature => 0 }, %alice);
cmp_ok($r3->{json}{usage}{prompt_tokens_details}{cached_tokens}, '>=', 3 * $B - $B,
       'alice does');
$e->finish;

# two workers sharing a disk tier, and a reload (SIGHUP): the old workers
# free their caches after their schedulers, the new ones find the blocks
my $w = Dsv4Nginx->standard(workers => 2, http => "    dsv4_cache on;\n    dsv4_cache_block $B;\n"
                                                 . "    dsv4_cache_disk kv max=64m;\n    dsv4_cache_memory 0;\n");
ok($w->run, 'two workers with a shared disk tier');
my @wp = map { 500 + ($_ * 2003) % 60000 } 1 .. 3 * $B + 5;
my $rw = cmpl($w, \@wp);
is($rw->{status}, 200, 'served');
$deadline = time + 20;
sleep 0.05 while ($w->metric('dsv4:cache_written_values_total', 'tier="disk"') || 0) < 3
    && time < $deadline;
kill 'HUP', $w->{pid};
$deadline = time + 20;
while (time < $deadline) {
    my $log = $w->read_file('error.log');
    last if $log =~ /gracefully shutting down/ && (() = $log =~ /model "demo" ready/g) >= 4;
    sleep 0.1;
}
sleep 0.5;
my $rw2 = cmpl($w, \@wp);
is($rw2->{status}, 200, 'served after the reload');
cmp_ok($rw2->{json}{usage}{prompt_tokens_details}{cached_tokens}, '>=', 2 * $B,
       'the new workers reuse the disk tier');
is($rw2->{json}{choices}[0]{text}, $rw->{json}{choices}[0]{text}, 'same output');
$w->finish;

done_testing;
