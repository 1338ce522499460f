#!/usr/bin/perl
# Worker lifecycle: a model that fails to load leaves the worker running
# with /health 503 naming the reason; a reload (SIGHUP) brings up new
# workers that load the models again while the counters carry on.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Temp qw(tempdir);
use Time::HiRes qw(time sleep);
use Dsv4Nginx qw(model_dir);

# a directory that exists (so nginx -t passes) but holds no checkpoint
my $empty = tempdir(CLEANUP => 1);
my $t = Dsv4Nginx->new(http => "dsv4_model broken $empty;\n",
                       server => "location = /health { dsv4_api health; }\n"
                               . "location = /v1/completions { dsv4_api completions; }\n");
ok($t->run(allow_failed => 1), 'nginx runs with a broken model');
my $r = $t->http('GET', '/health');
is($r->{status}, 503, '/health is 503');
is($r->{json}{models}{broken}{state}, 'failed', 'health names the failed model');
like($r->{json}{models}{broken}{error}, qr/config\.json/, 'and why');
is($r->{json}{error}{code}, 'model_loading', 'in the error shape');
is($r->{headers}{'retry-after'}, '1', 'Retry-After');
$r = $t->post_json('/v1/completions', { model => 'broken', prompt => [1], max_tokens => 1 });
is($r->{status}, 503, 'requests for it get 503');
like($t->read_file('error.log'), qr/\[emerg\].*dsv4: model "broken": .*config\.json/,
     'the load failure is logged once with the reason');
my $pid = $t->{pid};
ok(kill(0, $pid), 'the worker is still running');
$t->stop;
$t->log_clean('no alert or crit', qr/\[(alert|crit)\]/);

# reload
$t = Dsv4Nginx->standard(workers => 1);
ok($t->run, 'nginx with a master and a worker');
$r = $t->post_json('/v1/completions', { model => 'tiny', prompt => [1, 2], max_tokens => 3 });
is($r->{status}, 200, 'served before the reload');
my $gen = $t->metric('dsv4:generation_tokens_total', 'tiny');
is($gen, 3, 'counted');
kill 'HUP', $t->{pid};
my $t0 = time;
my $ok = 0;
while (time - $t0 < 20) {
    my $log = $t->read_file('error.log');
    if (($log =~ /gracefully shutting down/) && (() = $log =~ /model "tiny" ready/g) >= 2) {
        $ok = 1;
        last;
    }
    sleep 0.1;
}
ok($ok, 'new worker loaded the models after SIGHUP');
$r = $t->post_json('/v1/completions', { model => 'tiny', prompt => [1, 2], max_tokens => 2 });
is($r->{status}, 200, 'served after the reload');
is($t->metric('dsv4:generation_tokens_total', 'tiny'), 3 + $r->{json}{usage}{completion_tokens},
   'counters carried over the reload') or diag($r->{body});
$t->finish;

done_testing;
