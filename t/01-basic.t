#!/usr/bin/perl
# /health, /v1/models, /metrics basics; methods; the module in a stock
# nginx with several workers (weights mapped by each worker).

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Dsv4Nginx;

my $t = Dsv4Nginx->standard(workers => 2);
ok($t->run, 'nginx with 2 workers starts and loads the models');

my $r = $t->http('GET', '/health');
is($r->{status}, 200, 'GET /health 200 once loaded');
is($r->{json}{status}, 'ok', 'health body says ok');
is($r->{json}{models}{demo}{state}, 'ready', 'demo model ready');

$r = $t->http('HEAD', '/health');
is($r->{status}, 200, 'HEAD /health');
is($r->{body}, '', 'HEAD has no body');

$r = $t->http('GET', '/v1/models');
is($r->{status}, 200, 'GET /v1/models');
like($r->{headers}{'content-type'}, qr{^application/json}, 'models: JSON');
is($r->{json}{object}, 'list', 'models: a list');
my %ids = map { $_->{id} => $_ } @{ $r->{json}{data} };
ok($ids{$_}, "models lists $_") for qw(demo tiny deepseek-chat deepseek-reasoner);
is($ids{'deepseek-chat'}{root}, 'demo', 'an alias names its model as root');
is($ids{demo}{object}, 'model', 'entry object is "model"');
is($ids{tiny}{max_model_len}, 2048, 'max_model_len is the context limit');

$r = $t->http('POST', '/v1/models', '{}');
is($r->{status}, 405, 'POST /v1/models is 405');
is($r->{headers}{allow}, 'GET, HEAD', 'Allow header on 405');
is($r->{json}{error}{code}, 'method_not_allowed', '405 has the error shape');

$r = $t->http('GET', '/v1/chat/completions');
is($r->{status}, 405, 'GET on a POST API is 405');
is($r->{headers}{allow}, 'POST', 'Allow: POST');

$r = $t->http('GET', '/metrics');
is($r->{status}, 200, 'GET /metrics');
like($r->{headers}{'content-type'}, qr{^text/plain; version=0\.0\.4},
     'Prometheus text format');
like($r->{body}, qr/^# TYPE dsv4:num_requests_running gauge$/m, 'running gauge');
like($r->{body}, qr/^dsv4:model_loaded\{model_name="demo"\} 2$/m,
     'both workers loaded the demo model');
like($r->{body}, qr/^dsv4:time_to_first_token_seconds_bucket\{model_name="demo",le="\+Inf"\} \d+$/m,
     'TTFT histogram');

# a generation through whichever worker answers
for (1 .. 4) {
    $r = $t->post_json('/v1/completions',
                       { model => 'tiny', prompt => [1, 2, 3], max_tokens => 2 });
    is($r->{status}, 200, "completion $_ through the worker pool");
}

$t->finish;
done_testing;
