#!/usr/bin/perl
# Prefix cache faults with a real redis-server (docs/cache.md, "Failure
# policy"): Redis down at start, killed mid-stream, SIGSTOPped (every call
# times out), full (maxmemory with noeviction), values overwritten with
# garbage or with another block's value, busy in DEBUG SLEEP (a slow server:
# calls time out), restarted gracefully (SHUTDOWN NOSAVE, then started again
# on the same port: the cache reconnects and hits again).  Every request is still answered
# with the same greedy output as a cold run, the worker stays up, error.log
# gets a [warn] and dsv4:cache_errors_total moves for the right kind.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use Dsv4Nginx qw(sse_data);
use Dsv4Redis;

plan skip_all => 'redis-server not installed' unless Dsv4Redis->available;

my $B = 32;
my $PREFIX = 't-faults:';

my $redis = Dsv4Redis->new;     # not started yet: Redis is down at start

# memory tier off, so that every lookup and write goes to Redis; a short
# timeout so that the stopped server costs little
my $t = Dsv4Nginx->standard(http => "    dsv4_cache on;\n"
    . "    dsv4_cache_redis 127.0.0.1:" . $redis->port . ";\n"
    . "    dsv4_cache_redis_timeout 150ms;\n"
    . "    dsv4_cache_key_prefix $PREFIX;\n"
    . "    dsv4_cache_memory 0;\n"
    . "    dsv4_cache_block $B;\n");
my $cold = Dsv4Nginx->standard();
ok($t->run, 'nginx with the cache (Redis down)');
ok($cold->run, 'cold nginx');
my $pid = $t->{pid};
# under valgrind a request outlasts the wall-clock windows two checks compare
# it with (the 1 s back-off, a 3 s DEBUG SLEEP): those are skipped there
my $S = Dsv4Nginx::time_scale();

my $n = 0;
sub prompt {
    my ($seed, $len) = @_;
    return [map { 100 + (($_ + 31 * $seed) * 7919) % 60000 } 1 .. $len];
}

sub cmpl {
    my ($s, $p, %o) = @_;
    return $s->post_json('/v1/completions', { model => 'demo', prompt => $p,
                                              max_tokens => 10, temperature => 0, %o });
}

sub errors {
    my ($kind) = @_;
    return $t->metric('dsv4:cache_errors_total', "kind=\"$kind\"") || 0;
}

sub warns {
    my @w = grep { /\[warn\].*dsv4: model "[^"]+": cache:/ } split /\n/, $t->read_file('error.log');
    return scalar @w;
}

# Sends $p to the cached server and to the cold one: same output.
sub same_as_cold {
    my ($p, $name) = @_;
    my $r = cmpl($t, $p);
    my $c = cmpl($cold, $p);
    is($r->{status}, 200, "$name: answered");
    is($r->{json}{choices}[0]{text}, $c->{json}{choices}[0]{text},
       "$name: same greedy output as cold")
        or diag($r->{body});
    ok(kill(0, $pid), "$name: worker alive");
    return $r;
}

sub wait_until {
    my ($cond, $secs) = @_;
    my $deadline = time + ($secs || 10);
    while (time < $deadline) {
        return 1 if $cond->();
        sleep 0.05;
    }
    return 0;
}

sub redis_keys {
    my $out = $redis->cli('--scan', '--pattern', "$PREFIX*") || '';
    return grep { length } split /\n/, $out;
}

# 1. Redis down at start
my $w0 = warns();
same_as_cold(prompt(1, 4 * $B + 5), 'Redis down');
cmp_ok(errors('connect'), '>', 0, 'dsv4:cache_errors_total{kind="connect"} moved');
SKIP: {
    skip 'valgrind: the request outlasts the back-off window', 1 if $S > 1;
    is($t->metric('dsv4:cache_redis_up'), 0, 'dsv4:cache_redis_up 0 (backing off)');
}
ok(wait_until(sub { warns() > $w0 }), 'a [warn] in error.log');

# Redis comes up: after the back-off the cache works
ok($redis->start, 'redis-server started');
sleep 2.2;
my $p = prompt(2, 5 * $B + 3);
same_as_cold($p, 'Redis up (writes)');
ok(wait_until(sub { ($t->metric('dsv4:cache_written_values_total', 'tier="redis"') || 0) >= 5 }),
   'blocks written to Redis');
my $r = same_as_cold($p, 'Redis up (reads)');
cmp_ok($r->{json}{usage}{prompt_tokens_details}{cached_tokens}, '>=', 4 * $B, 'served from Redis');

# 2. killed in the middle of a stream
{
    my $lp = prompt(3, 6 * $B + 7);
    my $s = $t->start('POST', '/v1/completions',
                      Dsv4Nginx::json()->encode({ model => 'demo', prompt => $lp, max_tokens => 40,
                                                  temperature => 0, stream => JSON::PP::true }),
                      'Content-Type' => 'application/json');
    my $io0 = errors('io') + errors('connect') + errors('skipped');
    $redis->stop;
    my $raw = $t->read_until($s, sub { $_[0] =~ /data: \[DONE\]/ }, 60);
    close $s;
    my $text = join '', map { ref $_ ? ($_->{choices}[0]{text} // '') : '' }
                        sse_data(Dsv4Nginx::parse_response($raw)->{body});
    my $c = cmpl($cold, $lp, max_tokens => 40);
    like($raw, qr/data: \[DONE\]/, 'killed mid-stream: the stream completes');
    is($text, $c->{json}{choices}[0]{text}, 'killed mid-stream: same output as cold');
    same_as_cold(prompt(4, 3 * $B + 1), 'after the kill');
    ok(wait_until(sub { errors('io') + errors('connect') + errors('skipped') > $io0 }),
       'I/O, connect or skipped errors moved');
}

# 3. stopped (SIGSTOP): every call times out
ok($redis->start, 'redis-server restarted');
sleep 2.2;
same_as_cold(prompt(5, 4 * $B), 'restarted');
$redis->pause;
{
    my $to0 = errors('timeout');
    my $t0 = time;
    same_as_cold(prompt(5, 4 * $B + 9), 'Redis stopped');
    cmp_ok(time - $t0, '<', 10 * $S, 'answered without waiting for Redis');
    ok(wait_until(sub { errors('timeout') > $to0 }), 'dsv4:cache_errors_total{kind="timeout"} moved');
}
$redis->resume;
sleep 2.2;

# 4. garbage under the cache's keys, and a value moved under another key
{
    my $gp = prompt(6, 5 * $B + 2);
    same_as_cold($gp, 'fill');
    wait_until(sub { scalar(redis_keys()) >= 5 });
    my @keys = redis_keys();
    cmp_ok(scalar @keys, '>=', 5, 'entries in Redis (' . scalar(@keys) . ')');
    $redis->cli('SET', $_, "garbage \x01\x02 not msgpack") for @keys;
    my $c0 = errors('corrupt');
    my $r = same_as_cold($gp, 'garbage values');
    is($r->{json}{usage}{prompt_tokens_details}{cached_tokens}, 0, 'garbage is a miss');
    ok(wait_until(sub { errors('corrupt') > $c0 }), 'dsv4:cache_errors_total{kind="corrupt"} moved');

    # well-formed values under the wrong keys
    my $fp = prompt(7, 5 * $B + 2);
    same_as_cold($fp, 'fill again');
    wait_until(sub { scalar(redis_keys()) > scalar(@keys) + 4 });
    my %old = map { $_ => 1 } @keys;
    my @new = sort grep { !$old{$_} } redis_keys();
    cmp_ok(scalar @new, '>=', 2, 'new entries (' . scalar(@new) . ')');
    # rotate the values one key along (a server-side copy keeps the bytes)
    my $rot = "local v = redis.call('GET', KEYS[#KEYS]) "
            . "for i = #KEYS, 2, -1 do redis.call('SET', KEYS[i], redis.call('GET', KEYS[i-1])) end "
            . "redis.call('SET', KEYS[1], v) return #KEYS";
    $redis->cli('EVAL', $rot, scalar(@new), @new) if @new >= 2;
    my $f0 = errors('foreign') + errors('corrupt');
    $r = same_as_cold($fp, 'values under the wrong keys');
    ok(wait_until(sub { errors('foreign') + errors('corrupt') > $f0 }),
       'dsv4:cache_errors_total{kind="foreign"} (or corrupt) moved');
}

# 5. full: maxmemory tiny with noeviction
{
    $redis->cli('FLUSHALL');
    $redis->cli('CONFIG', 'SET', 'maxmemory-policy', 'noeviction');
    $redis->cli('CONFIG', 'SET', 'maxmemory', '1');
    my $o0 = errors('oom');
    same_as_cold(prompt(8, 4 * $B + 3), 'Redis full');
    ok(wait_until(sub { errors('oom') > $o0 }), 'dsv4:cache_errors_total{kind="oom"} moved');
    $redis->cli('CONFIG', 'SET', 'maxmemory', '0');
}

sub written_redis {
    return $t->metric('dsv4:cache_written_values_total', 'tier="redis"') || 0;
}

# Sends $p until a lookup finds at least $min cached tokens (the first sends
# fill Redis; a lookup that meets a dead connection backs off 2 s).
sub hit_again {
    my ($p, $name, $min) = @_;
    my $got = 0;
    for my $try (1 .. 4) {
        my $w = written_redis();
        my $r = same_as_cold($p, "$name (try $try)");
        $got = $r->{json}{usage}{prompt_tokens_details}{cached_tokens} // 0;
        last if $got >= $min;
        wait_until(sub { written_redis() > $w }, 3);
        sleep 2.2 if $try > 1;
    }
    cmp_ok($got, '>=', $min, "$name: served from Redis again");
}

# 6. slow server: DEBUG SLEEP (every call times out while it sleeps)
SKIP: {
    skip 'redis-server refuses DEBUG', 7 unless $redis->debug_ok;
    sleep 2.2;
    my $sp = prompt(9, 4 * $B + 6);
    hit_again($sp, 'before DEBUG SLEEP', 4 * $B);
    my $to0 = errors('timeout');
    my $kid = $redis->debug_sleep(3);
    sleep 0.3;
    my $t0 = time;
    my $r = same_as_cold($sp, 'Redis in DEBUG SLEEP');
    SKIP: {
        skip 'valgrind: the request outlasts the 3 s DEBUG SLEEP', 1 if $S > 1;
        cmp_ok(time - $t0, '<', 2.5, 'answered before the server woke up');
    }
    is($r->{json}{usage}{prompt_tokens_details}{cached_tokens}, 0, 'the slow server is a miss');
    ok(wait_until(sub { errors('timeout') > $to0 }), 'dsv4:cache_errors_total{kind="timeout"} moved');
    waitpid($kid, 0);
    sleep 2.2;
    hit_again($sp, 'after DEBUG SLEEP', 4 * $B);
}

# 7. graceful restart: SHUTDOWN NOSAVE, then a new server on the same port
{
    my $gp = prompt(10, 5 * $B + 4);
    sleep 2.2;
    hit_again($gp, 'before the restart', 5 * $B);
    ok($redis->shutdown, 'SHUTDOWN NOSAVE: redis-server exited');
    my $r = same_as_cold($gp, 'Redis shut down');
    is($r->{json}{usage}{prompt_tokens_details}{cached_tokens}, 0, 'shut down: a miss');
    ok($redis->start, 'redis-server started again on port ' . $redis->port);
    is(scalar(redis_keys()), 0, 'the new server is empty (no persistence)');
    sleep 2.2;
    hit_again($gp, 'after the restart', 5 * $B);
    cmp_ok(scalar(redis_keys()), '>=', 5, 'refilled the new server');
    ok(wait_until(sub { $t->metric('dsv4:cache_redis_up') }), 'dsv4:cache_redis_up back to 1');
}

my $r2 = $t->http('GET', '/health');
is($r2->{status}, 200, '/health still 200');
cmp_ok(warns(), '>', $w0, '[warn] lines in error.log');
$redis->stop;
$t->finish;
$cold->finish;

done_testing;
