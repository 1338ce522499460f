#!/usr/bin/perl
# Per-tenant metering (docs/limits.md, "Metering"): two nginx instances
# share one redis-server (dsv4_limit_zone ... redis); tenants ann (two keys:
# one tenant) and ben send a mix of chat / completions / messages requests,
# streamed or not, thinking or not, with prefix-cache hits (A has the
# cache), and streams and a request cut by the client mid-way.  Then
#  - GET /v1/usage (each tenant with its own key, on both servers) and the
#    admin endpoint (dsv4_api usage_admin; missing / wrong admin key: 401)
#    equal the sum of the usage returned to the clients, plus, for the cut
#    requests, what the access log recorded ($dsv4_*_tokens, at least the
#    tokens the client had received)
#  - the Prometheus counters dsv4:tenant_*_total of both servers sum to
#    the same totals
#  - rejected requests and requests that never reached the engine are not
#    metered; reading /v1/usage is not metered either
#  - the shm zone (one host) meters the same way

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Digest::SHA qw(sha256_hex);
use File::Temp qw(tempdir);
use POSIX qw(strftime);
use Time::HiRes qw(time sleep);
use Dsv4Nginx qw(sse_data);
use Dsv4Redis;

ok(Dsv4Redis->available, 'redis-server and redis-cli are installed')
    or die "t/metering.t needs redis-server (apt-get install redis-server)\n";

my $B = 32;     # cache block (the demo model's compress ratios are 4 and 32)
my @FIELDS = qw(requests prompt_tokens cached_tokens completion_tokens reasoning_tokens);
my $rnd = join '', map { sprintf '%04x', int rand 65536 } 1 .. 4;
my %K = (ann1 => "sk-m-ann1-$rnd", ann2 => "sk-m-ann2-$rnd", ben => "sk-m-ben-$rnd",
         cat => "sk-m-cat-$rnd", admin => "sk-m-admin-$rnd");
my %TENANT = (ann1 => 'ann', ann2 => 'ann', ben => 'ben', cat => 'cat');
my $kdir = tempdir('dsv4-meter-keys-XXXXXX', TMPDIR => 1, CLEANUP => 1);
my $kf = "$kdir/keys.txt";
{
    open my $fh, '>', $kf or die;
    print $fh sha256_hex($K{ann1}) . " ann\n", sha256_hex($K{ann2}) . " ann\n",
              sha256_hex($K{ben}) . " ben\n", sha256_hex($K{cat}) . " cat rpm=2\n";
    close $fh;
}

my $redis = Dsv4Redis->new;
ok($redis->start, 'redis-server on 127.0.0.1:' . $redis->port);

my $LOG = 'id=$http_x_test_id st=$status tenant=$dsv4_tenant ls=$dsv4_limit_status'
        . ' pt=$dsv4_prompt_tokens ct=$dsv4_completion_tokens cached=$dsv4_cached_tokens'
        . ' rt=$dsv4_reasoning_tokens';
my $api = "dsv4_keys $kf; dsv4_limit zone=m;";
my $server = "        location = /v1/usage { dsv4_api usage; $api }\n"
           . "        location = /admin/usage { dsv4_api usage_admin; dsv4_limit zone=m;"
           . ' dsv4_admin_key ' . sha256_hex($K{admin}) . "; }\n";
# the scalar backend: streams last long enough to be cut mid-way
my $http = "    dsv4_backend scalar;\n"
         . '    dsv4_redis 127.0.0.1:' . $redis->port . ";\n"
         . "    dsv4_limit_zone zone=m:1m redis;\n";
my $A = Dsv4Nginx->standard(workers => 1, api => $api, server => $server, access_log => $LOG,
                            http => $http . "    dsv4_cache on;\n    dsv4_cache_block $B;\n");
my $Bs = Dsv4Nginx->standard(workers => 2, api => $api, server => $server, access_log => $LOG,
                             http => $http);
ok($A->run, 'server A (1 worker, prefix cache)');
ok($Bs->run, 'server B (2 workers)');
my $day0 = strftime('%Y-%m-%d', gmtime);

my $J = Dsv4Nginx::json();
my (%expect, %cut);     # tenant -> field -> sum; test id -> [tenant, tokens received]
$expect{$_} = { map { $_ => 0 } @FIELDS } for qw(ann ben cat);
my $n = 0;

sub add {
    my ($tenant, $u) = @_;
    $expect{$tenant}{requests}++;
    $expect{$tenant}{$_} += $u->{$_} // 0 for grep { $_ ne 'requests' } @FIELDS;
}

# usage as the clients saw it, in the metering's terms
sub openai_usage {
    my ($u) = @_;
    return undef unless ref $u;
    return { prompt_tokens => $u->{prompt_tokens},
             cached_tokens => ($u->{prompt_tokens_details} || {})->{cached_tokens} // 0,
             completion_tokens => $u->{completion_tokens},
             reasoning_tokens => ($u->{completion_tokens_details} || {})->{reasoning_tokens} // 0 };
}
sub anthropic_usage {
    my ($start, $delta) = @_;     # usage of the message (or message_start), of message_delta
    my $in = $delta && defined $delta->{input_tokens} ? $delta : $start;
    my $cached = $in->{cache_read_input_tokens} // 0;
    return { prompt_tokens => $in->{input_tokens} + $cached, cached_tokens => $cached,
             completion_tokens => ($delta || $start)->{output_tokens}, reasoning_tokens => 0 };
}

my %sent;   # test id -> usage (for the access-log cross-check)

# One request to server $t with key $who; records what the client saw.
sub req {
    my ($t, $who, $path, $body) = @_;
    my $id = 'm' . ++$n;
    my %h = ('X-Test-Id' => $id);
    if ($path eq '/v1/messages') {
        %h = (%h, 'x-api-key' => $K{$who}, 'anthropic-version' => '2023-06-01');
    } else {
        $h{Authorization} = "Bearer $K{$who}";
    }
    my $r = $t->post_json($path, $body, %h);
    my $u;
    if ($r->{status} == 200) {
        if (!$body->{stream}) {
            $u = $path eq '/v1/messages' ? anthropic_usage($r->{json}{usage})
                                         : openai_usage($r->{json}{usage});
        } elsif ($path eq '/v1/messages') {
            my @ev = sse_data($r->{body}, 1);
            my ($st) = grep { $_->[0] eq 'message_start' } @ev;
            my ($md) = grep { $_->[0] eq 'message_delta' } @ev;
            $u = anthropic_usage($st && $st->[1]{message}{usage}, $md && $md->[1]{usage});
        } else {
            my ($last) = grep { ref $_ && ref $_->{usage} } sse_data($r->{body});
            $u = openai_usage($last && $last->{usage});
        }
    }
    ok($r->{status} == 200 && $u && defined $u->{prompt_tokens} && defined $u->{completion_tokens},
       "$id: $who $path" . ($body->{stream} ? ' (stream)' : '') . ' with usage')
        or diag($r->{body});
    if ($u) {
        add($TENANT{$who}, $u);
        $sent{$id} = $u;
    }
    return ($r, $u);
}

my @msgs = ({ role => 'system', content => 'Answer in one line.' },
            { role => 'user', content => 'What is the capital of France?' });
my %inc = (stream => JSON::PP::true, stream_options => { include_usage => JSON::PP::true });

my ($r1, $u1) = req($A, 'ann1', '/v1/chat/completions', { model => 'demo', messages => \@msgs, max_tokens => 5 });
my (undef, $ur) = req($Bs, 'ann2', '/v1/chat/completions',
                      { model => 'deepseek-reasoner', messages => \@msgs, max_tokens => 8 });
cmp_ok($ur && $ur->{reasoning_tokens}, '>', 0, 'deepseek-reasoner: reasoning tokens');
req($A, 'ann1', '/v1/chat/completions', { model => 'demo', messages => \@msgs, max_tokens => 6, %inc });
my (undef, $urs) = req($Bs, 'ben', '/v1/chat/completions',
                       { model => 'demo', messages => \@msgs, max_tokens => 7,
                         thinking => { type => 'enabled' }, %inc });
cmp_ok($urs && $urs->{reasoning_tokens}, '>', 0, 'thinking enabled, streamed: reasoning tokens');
req($Bs, 'ben', '/v1/completions', { model => 'demo', prompt => 'Once upon a time', max_tokens => 4 });
req($A, 'ann2', '/v1/completions', { model => 'demo', prompt => 'The quick brown fox', max_tokens => 5, %inc });
req($A, 'ben', '/v1/messages', { model => 'demo', messages => [$msgs[1]], max_tokens => 5 });
req($Bs, 'ann1', '/v1/messages', { model => 'demo', messages => [$msgs[1]], max_tokens => 6,
                                   stream => JSON::PP::true });
req($A, 'ben', '/v1/chat/completions', { model => 'demo', messages => \@msgs, max_tokens => 3, n => 2 });
req($Bs, 'ann2', '/v1/completions', { model => 'tiny', prompt => [5, 6, 7, 8], max_tokens => 9 });
req($Bs, 'ben', '/v1/completions', { model => 'demo', prompt => ['Hello world', 'Goodbye moon'],
                                     max_tokens => 3, n => 2 });

# prefix-cache hits on A: the same long prompt twice
{
    my @long = map { 100 + ($_ * 7919) % 60000 } 1 .. 5 * $B + 3;
    req($A, 'ben', '/v1/completions', { model => 'demo', prompt => \@long, max_tokens => 2 });
    my $deadline = time + 20;
    sleep 0.05 while time < $deadline
        && ($A->metric('dsv4:cache_written_values_total', 'tier="memory"') || 0) < 5;
    my (undef, $uc) = req($A, 'ben', '/v1/completions', { model => 'demo', prompt => \@long,
                                                        max_tokens => 2 });
    cmp_ok($uc && $uc->{cached_tokens}, '>=', 4 * $B, 'the second one reads the prefix cache');
}

# never reach the engine, or refused: not metered
is($A->post_json('/v1/chat/completions', { model => 'nope', messages => \@msgs },
                 Authorization => "Bearer $K{ann1}")->{status}, 404, 'an unknown model: 404');
is($A->post_json('/v1/chat/completions', '{"model":', 'Authorization' => "Bearer $K{ben}")->{status},
   400, 'a body that is not JSON: 400');
{
    my @st;
    for my $i (1 .. 4) {
        my $r = $i <= 2 ? (req($i % 2 ? $A : $Bs, 'cat', '/v1/chat/completions',
                               { model => 'demo', messages => \@msgs, max_tokens => 2 }))[0]
                        : $Bs->post_json('/v1/chat/completions', { model => 'demo', messages => \@msgs,
                                                                   max_tokens => 2 },
                                         Authorization => "Bearer $K{cat}");
        push @st, $r->{status};
    }
    is("@st", '200 200 429 429', 'cat (rpm=2): two served, two refused');
}

# cut by the client: streams after a few tokens, a non-streamed request
# while it runs
sub cut_stream {
    my ($t, $who, $model, $tokens) = @_;
    my $id = 'cut' . ++$n;
    my $s = $t->start('POST', '/v1/chat/completions',
                      $J->encode({ model => $model, messages => \@msgs, max_tokens => 3000,
                                   stream => JSON::PP::true }),
                      'Content-Type' => 'application/json', Authorization => "Bearer $K{$who}",
                      'X-Test-Id' => $id);
    my $count = sub {
        my $body = Dsv4Nginx::parse_response($_[0])->{body};
        return scalar grep { ref $_ && $_->{choices} && ref $_->{choices}[0]{delta}
                             && length(($_->{choices}[0]{delta}{content} // '')
                                       . ($_->{choices}[0]{delta}{reasoning_content} // '')) }
                      sse_data($body);
    };
    my $raw = $t->read_until($s, sub { $count->($_[0]) >= $tokens }, 15);
    close $s;
    my $got = $count->($raw);
    cmp_ok($got, '>=', $tokens, "$id: $who received $got tokens, then closed the stream");
    $cut{$id} = [$TENANT{$who}, $got];
}
cut_stream($A, 'ann1', 'demo', 3);
cut_stream($Bs, 'ben', 'demo', 5);
cut_stream($A, 'ann2', 'deepseek-reasoner', 4);
{
    my $id = 'cut' . ++$n;
    my $s = $Bs->start('POST', '/v1/chat/completions',
                       $J->encode({ model => 'demo', messages => \@msgs, max_tokens => 3000 }),
                       'Content-Type' => 'application/json', Authorization => "Bearer $K{ben}",
                       'X-Test-Id' => $id);
    sleep 0.5;
    close $s;
    $cut{$id} = ['ben', 0];
}

# the cut requests' final counts, from the access log
my %log = %{ Dsv4Nginx::logged_ids([$A, $Bs], [keys %cut, keys %sent], 15) };
for my $id (sort keys %cut) {
    my ($tenant, $got) = @{ $cut{$id} };
    my $e = $log{$id};
    ok($e, "$id: in the access log") or next;
    is($e->{tenant}, $tenant, "$id: tenant $tenant");
    is($e->{pt}, $u1->{prompt_tokens}, "$id: \$dsv4_prompt_tokens = the prompt");
    cmp_ok($e->{ct}, '>=', $got, "$id: \$dsv4_completion_tokens $e->{ct} >= the $got tokens received");
    cmp_ok($e->{ct}, '<', 3000, "$id: cut before max_tokens");
    add($tenant, { prompt_tokens => $e->{pt}, cached_tokens => $e->{cached},
                   completion_tokens => $e->{ct}, reasoning_tokens => $e->{rt} });
}
cmp_ok($log{'cut' . ($n - 1)}{rt} // 0, '>', 0, 'the cut thinking stream logged reasoning tokens');

# the access log agrees with what the clients saw
{
    my @bad;
    for my $id (sort keys %sent) {
        my $e = $log{$id} or do { push @bad, "$id not logged"; next };
        for (['pt', 'prompt_tokens'], ['ct', 'completion_tokens'], ['cached', 'cached_tokens'],
             ['rt', 'reasoning_tokens'])
        {
            push @bad, "$id: $_->[0]=" . ($e->{$_->[0]} // 'none') . ", the client saw $sent{$id}{$_->[1]}"
                unless ($e->{$_->[0]} // '') eq $sent{$id}{$_->[1]};
        }
    }
    ok(!@bad, 'access log: $dsv4_{prompt,completion,cached,reasoning}_tokens = the usage returned')
        or diag(join "\n", @bad);
}

cmp_ok($expect{ben}{cached_tokens}, '>', 0, 'the traffic includes cached tokens');
cmp_ok($expect{ann}{reasoning_tokens}, '>', 0, 'and reasoning tokens');

# ---- /v1/usage ----------------------------------------------------------------

sub usage {
    my ($t, $who) = @_;
    my $r = $t->http('GET', '/v1/usage', undef, $who ? (Authorization => "Bearer $K{$who}") : ());
    return $r;
}
sub period_diff {
    my ($got, $want) = @_;
    return 'missing' unless ref $got eq 'HASH';
    my @d = map { "$_ " . ($got->{$_} // 'none') . " != $want->{$_}" }
            grep { ($got->{$_} // -1) != $want->{$_} } @FIELDS;
    return join ', ', @d;
}

# metering is written when a request ends: poll until the totals settle
{
    my $deadline = time + 10;
    while (time < $deadline) {
        my $j = usage($A, 'ann1')->{json};
        last if $j && !period_diff($j->{today}, $expect{ann})
             && !period_diff(usage($A, 'ben')->{json}{today}, $expect{ben});
        sleep 0.1;
    }
}
my $same_day = strftime('%Y-%m-%d', gmtime) eq $day0;
for (['ann1', $A], ['ann2', $Bs], ['ben', $A], ['ben', $Bs], ['cat', $Bs]) {
    my ($who, $t) = @$_;
    my $tenant = $TENANT{$who};
    my $srv = $t == $A ? 'A' : 'B';
    my $r = usage($t, $who);
    is($r->{status}, 200, "GET /v1/usage on $srv with $who\'s key");
    my $j = $r->{json} || {};
    is($j->{object}, 'usage', 'object usage');
    is($j->{tenant}, $tenant, "tenant $tenant");
    is($j->{day}, strftime('%Y-%m-%d', gmtime), 'day: today, UTC');
    is($j->{month}, strftime('%Y-%m', gmtime), 'month: this month, UTC');
    is(period_diff($j->{today}, $expect{$tenant}), '', "$tenant today = the usage returned (+ cut requests)")
        or diag($J->encode($j) . "\nexpected " . $J->encode($expect{$tenant}));
    is(period_diff($j->{this_month}, $expect{$tenant}), '', "$tenant this_month too") if $same_day;
}
is(usage($A, 'ann1')->{body}, usage($A, 'ann1')->{body}, 'reading /v1/usage is not metered');
{
    my $r = usage($A, undef);
    is($r->{status}, 401, '/v1/usage without a key: 401');
    is($r->{json} && $r->{json}{error}{code}, 'missing_api_key', 'missing_api_key');
}

# ---- admin ------------------------------------------------------------------

for my $t ($A, $Bs) {
    my $srv = $t == $A ? 'A' : 'B';
    is($t->http('GET', '/admin/usage')->{status}, 401, "$srv: admin usage without a key: 401");
    is($t->http('GET', '/admin/usage', undef, Authorization => "Bearer $K{ann1}")->{status}, 401,
       "$srv: a tenant key is not the admin key: 401");
    is($t->http('GET', '/admin/usage', undef, Authorization => "Bearer $K{admin}x")->{status}, 401,
       "$srv: a wrong admin key: 401");
    my $r = $t->http('GET', '/admin/usage', undef, Authorization => "Bearer $K{admin}");
    is($r->{status}, 200, "$srv: admin usage with the admin key");
    my $j = $r->{json} || {};
    is($j->{object}, 'list', 'object list');
    is($j->{day}, strftime('%Y-%m-%d', gmtime), 'day');
    my %by = map { ($_->{tenant} // '') => $_ } @{ $j->{data} || [] };
    is_deeply([sort keys %by], [qw(ann ben cat)], 'every tenant metered today, nothing else');
    for my $tenant (qw(ann ben cat)) {
        is(period_diff($by{$tenant} && $by{$tenant}{today}, $expect{$tenant}), '',
           "$srv admin: $tenant today");
        is(period_diff($by{$tenant} && $by{$tenant}{this_month}, $expect{$tenant}), '',
           "$srv admin: $tenant this_month") if $same_day;
    }
}

# ---- Prometheus -----------------------------------------------------------------

for my $tenant (qw(ann ben cat)) {
    my @bad;
    for my $f (@FIELDS) {
        my $name = $f eq 'requests' ? 'dsv4:tenant_requests_total' : "dsv4:tenant_${f}_total";
        my $sum = 0;
        $sum += $_->metric_sum($name, tenant => $tenant) // 0 for $A, $Bs;
        push @bad, "$name $sum != $expect{$tenant}{$f}" unless $sum == $expect{$tenant}{$f};
    }
    ok(!@bad, "dsv4:tenant_*_total{tenant=\"$tenant\"} of A + B = the usage") or diag(join "\n", @bad);
}
is(($A->metric_sum('dsv4:tenant_rejected_total', tenant => 'cat') // 0)
   + ($Bs->metric_sum('dsv4:tenant_rejected_total', tenant => 'cat') // 0), 2,
   'dsv4:tenant_rejected_total{tenant="cat"}: the two refused');

$A->finish;
$Bs->finish;

# ---- shm zone: one host ----------------------------------------------------------

{
    my $c = Dsv4Nginx->standard(workers => 2, server => $server =~ s/zone=m/zone=s/gr,
                                api => "dsv4_keys $kf; dsv4_limit zone=s;",
                                http => "    dsv4_limit_zone zone=s:1m;\n");
    ok($c->run, 'server C: shm zone, 2 workers');
    %expect = ();
    $expect{$_} = { map { $_ => 0 } @FIELDS } for qw(ann ben);
    req($c, 'ann1', '/v1/chat/completions', { model => 'demo', messages => \@msgs, max_tokens => 4 }) for 1 .. 3;
    req($c, 'ann2', '/v1/chat/completions', { model => 'deepseek-reasoner', messages => \@msgs,
                                              max_tokens => 5, %inc });
    req($c, 'ben', '/v1/messages', { model => 'demo', messages => [$msgs[1]], max_tokens => 3 });
    my $deadline = time + 5;
    sleep 0.05 while time < $deadline && period_diff(usage($c, 'ann1')->{json}{today}, $expect{ann});
    for my $who (qw(ann1 ben)) {
        my $j = usage($c, $who)->{json} || {};
        my $tenant = $TENANT{$who};
        is(period_diff($j->{today}, $expect{$tenant}), '', "shm: $tenant today = the usage returned")
            or diag($J->encode($j));
    }
    my $j = $c->http('GET', '/admin/usage', undef, Authorization => "Bearer $K{admin}")->{json} || {};
    my %by = map { ($_->{tenant} // '') => $_ } @{ $j->{data} || [] };
    is(period_diff($by{ann} && $by{ann}{today}, $expect{ann}), '', 'shm admin: ann');
    my $sum = $c->metric_sum('dsv4:tenant_completion_tokens_total', tenant => 'ann') // -1;
    is($sum, $expect{ann}{completion_tokens}, 'shm: dsv4:tenant_completion_tokens_total (both workers)');
    $c->finish;
}

$redis->stop;
done_testing;
