#!/usr/bin/perl
# An outage never floods the error log (ngx_http_dsv4_log.c, cache.c): with
# Redis down, every request of a fail-closed limit zone is refused (503) and
# every prefix-cache lookup fails, yet each cause -- the Redis connection,
# the limit zone, the 503 answers, the cache's Redis tier -- writes one line
# per 10 s per worker; the next line of a cause says how many were not
# logged.  Each refusal is still answered and counted in /metrics.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep);
use Digest::SHA qw(sha256_hex);
use Dsv4Nginx;

my $dead = Dsv4Nginx::free_port();      # nothing listens here
my $key = 'sk-flood-' . join '', map { sprintf '%04x', int rand 65536 } 1 .. 4;
my $t = Dsv4Nginx->standard(
    http => "    dsv4_redis 127.0.0.1:$dead timeout=200ms;\n"
          . "    dsv4_limit_zone zone=f:1m redis;\n"
          . "    dsv4_cache on;\n    dsv4_cache_block 32;\n    dsv4_cache_memory 0;\n"
          . "    dsv4_cache_redis 127.0.0.1:$dead;\n",
    server => "        location = /closed/v1/chat/completions { dsv4_api chat_completions;"
            . " dsv4_keys keys.txt; dsv4_limit zone=f; dsv4_limit_fail closed; }\n");
open my $fh, '>', $t->dir . '/keys.txt' or die;
print $fh sha256_hex($key) . " flood rpm=100000\n";
close $fh;
ok($t->run, 'nginx with Redis down for limits and cache');

my $msgs = [{ role => 'user', content => 'hi' }];
my ($refused, $served) = (0, 0);
for my $i (1 .. 150) {
    my $r = $t->post_json('/closed/v1/chat/completions',
                          { model => 'demo', messages => $msgs, max_tokens => 1 },
                          Authorization => "Bearer $key");
    $refused++ if $r->{status} == 503;
}
is($refused, 150, 'fail closed: all 150 requests refused with 503');
my @prompt = map { 300 + ($_ * 7919) % 60000 } 1 .. 70;
for my $i (1 .. 40) {
    my $r = $t->post_json('/v1/completions', { model => 'demo', prompt => [@prompt, $i],
                                                max_tokens => 1, temperature => 0 });
    $served++ if $r->{status} == 200;
}
is($served, 40, 'the cache failing on every lookup: all 40 served');
cmp_ok($t->metric('dsv4:cache_errors_total', 'kind="connect"') // 0, '>=', 1,
       'cache failures counted');
cmp_ok($t->metric('dsv4:http_errors_total', 'api="chat_completions",code="503"') // 0, '==', 150,
       'every 503 counted');

sub faults { grep { /\[(warn|error|crit|alert)\]/ } split /\n/, $t->read_file('error.log') }
my @f = faults();
cmp_ok(scalar @f, '<=', 8, scalar(@f) . ' fault lines for 190 failing requests (one per cause)')
    or diag(join "\n", @f);
ok((grep { /limit zone "f"/ } @f) && (grep { /dsv4: 503 / } @f) && (grep { /cache/ } @f),
   'the limit zone, the 503s and the cache each logged') or diag(join "\n", @f);

# after the interval the next line of a cause counts what was not logged
sleep 10.5 * Dsv4Nginx::time_scale();
$t->post_json('/closed/v1/chat/completions', { model => 'demo', messages => $msgs, max_tokens => 1 },
              Authorization => "Bearer $key") for 1 .. 3;
my @g = grep { /dsv4: 503 / } faults();
like($g[-1] // '', qr/\(149 more like this in the last \d+ s not logged\)/,
     'the 503 line after the interval counts the 149 not logged') or diag(join "\n", @g);

$t->finish;
$t->log_clean(undef, qr/\[(alert|crit|emerg)\]|AddressSanitizer|runtime error/);
done_testing;
