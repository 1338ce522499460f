#!/usr/bin/perl
# Per-tenant limits held across a fleet (docs/limits.md): two nginx
# instances (A with two workers, B with one) share one redis-server
# (dsv4_limit_zone ... redis); concurrent clients spread over both.
#  - tpm: accepted tokens (sum of usage.total_tokens) within 5% + one
#    reservation of the limit, the rest 429 with Retry-After, the
#    x-ratelimit-*-tokens trio and an OpenAI rate_limit_exceeded body that
#    names the limit, the use and the cost (prompt + max_tokens); Anthropic's
#    shape on /v1/messages; a cost above the limit outright is refused
#    without Retry-After
#  - reconciliation: a stream reserving prompt + 3000 and cut after a few
#    tokens stays charged for what was generated only
#  - rpm: the same with requests and the -requests trio
#  - concurrency: at most C streams at once across both instances; the
#    C+1th is 429; closing one lets a new one in; a client that waits for
#    each answer never hits concurrency=1
#  - daily budget, dsv4_limit_status, dry run (served, logged
#    REJECTED_DRY_RUN, counted), the access-log variables, the rejected
#    counters
#  - Redis down: dsv4_limit_fail open (served, FAILED_OPEN, counter, a
#    rate-limited [warn]) and closed (503 + Retry-After); Redis back
#  - shm zone full (a 32k zone, 40 tenants): the fail policy, no crash
#  - the shm backend (one host, no Redis): the same tpm test across the
#    workers of one instance, reconciliation, the POST APIs counting
#    against rpm (GET /v1/models not), estimate=N, tokens=completion|prompt
#  - conf.d/limits.conf included in conf.d/dsv4.conf works on the demo model

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Digest::SHA qw(sha256_hex);
use File::Temp qw(tempdir);
use POSIX qw(:sys_wait_h);
use Time::HiRes qw(time sleep);
use Dsv4Nginx;
use Dsv4Redis;

ok(Dsv4Redis->available, 'redis-server and redis-cli are installed')
    or die "t/limits_fleet.t needs redis-server (apt-get install redis-server)\n";

my $TPM = 2000;     # tokens per minute of tenant "tok"
my $MT = 40;        # max_tokens of its requests
my $RPM = 30;       # requests per minute of tenant "req"
my $CONC = 2;       # concurrent requests of tenant "conc"
my $DAILY = 300;    # tokens per day of tenant "day"

my $rnd = join '', map { sprintf '%04x', int rand 65536 } 1 .. 4;
# one tenant per check, so that no check sees another's traffic
my %limits = (tok => "tpm=$TPM", req => "rpm=$RPM", conc => "concurrency=$CONC",
              small => 'tpm=50', seq => 'concurrency=1', rec => 'tpm=100000',
              rec2 => 'tpm=100000', est => 'tpm=100', pro => 'tpm=1000', mod => 'rpm=3',
              day => "daily=$DAILY", dry => 'rpm=3', st => 'rpm=1', fo => 'rpm=1000',
              map { (sprintf('z%02d', $_) => 'rpm=1000') } 0 .. 39);
my %K = map { $_ => "sk-lim-$_-$rnd" } keys %limits;
my $kdir = tempdir('dsv4-lim-keys-XXXXXX', TMPDIR => 1, CLEANUP => 1);
my $kf = "$kdir/keys.txt";
{
    open my $fh, '>', $kf or die;
    print $fh sha256_hex($K{$_}) . " $_ $limits{$_}\n" for sort keys %limits;
    close $fh;
}

my $redis = Dsv4Redis->new;
ok($redis->start, 'redis-server on 127.0.0.1:' . $redis->port);

my $LOG = 'id=$http_x_test_id st=$status tenant=$dsv4_tenant ls=$dsv4_limit_status'
        . ' pt=$dsv4_prompt_tokens ct=$dsv4_completion_tokens';
my $api = "dsv4_keys $kf; dsv4_limit zone=t;";
my $extra = '';
for (['dry', 'dsv4_limit_dry_run on;'], ['closed', 'dsv4_limit_fail closed;'],
     ['s503', 'dsv4_limit_status 503;'])
{
    $extra .= "        location = /$_->[0]/v1/chat/completions {"
            . " dsv4_api chat_completions; $api $_->[1] }\n";
}
my $http = '    dsv4_redis 127.0.0.1:' . $redis->port . " timeout=200ms;\n"
         . "    dsv4_limit_zone zone=t:1m redis;\n";
my $A = Dsv4Nginx->standard(workers => 2, http => $http, api => $api, server => $extra,
                            access_log => $LOG);
my $B = Dsv4Nginx->standard(workers => 1, http => $http, api => $api, server => $extra,
                            access_log => $LOG);
ok($A->run, 'server A (2 workers)');
ok($B->run, 'server B (1 worker)');

my $J = Dsv4Nginx::json();
my $PROMPT = 'Count the sheep in the field, one by one, slowly.';

sub chat {
    my ($t, $who, %o) = @_;
    my $path = delete $o{path} || '/v1/chat/completions';
    my %h = (Authorization => "Bearer $K{$who}");
    $h{'X-Test-Id'} = delete $o{id} if $o{id};
    return $t->post_json($path, { model => 'demo', messages => [{ role => 'user', content => $PROMPT }],
                                  max_tokens => $MT, temperature => 0, %o }, %h);
}

# OpenAI's reset form: "20ms", "1s", "6m0s", "1h2m3s" -> ms (undef if not)
sub dur_ms {
    my ($s) = @_;
    return undef unless defined $s && length $s
        && $s =~ /^(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+)ms)?$/;
    return (($1 // 0) * 3600 + ($2 // 0) * 60 + ($3 // 0)) * 1000 + ($4 // 0);
}

# Reconciliation: a stream reserving prompt + 3000 tokens, cut by the client
# after a few, leaves only what was generated charged (tenant $who, tpm
# 100000): the next request's x-ratelimit-remaining-tokens says so.
sub reconcile_test {
    my ($name, $t1, $t2, $who) = @_;
    my $id = "rec-$who";
    my $s = $t1->start('POST', '/v1/chat/completions',
                       $J->encode({ model => 'demo', stream => JSON::PP::true, max_tokens => 3000,
                                    messages => [{ role => 'user', content => $PROMPT }] }),
                       'Content-Type' => 'application/json', Authorization => "Bearer $K{$who}",
                       'X-Test-Id' => $id);
    my $raw = $t1->read_until($s, sub { my @n = $_[0] =~ /data: \{/g; @n >= 3 }, 15);
    my $rem1 = Dsv4Nginx::parse_response($raw)->{headers}{'x-ratelimit-remaining-tokens'};
    close $s;
    my $log = $t1->wait_file('access.log', sub { $_[0] =~ /id=\Q$id\E / }, 10) // '';
    my ($ct) = $log =~ /id=\Q$id\E .*? pt=\d+ ct=(\d+)/;
    my ($pt) = $log =~ /id=\Q$id\E .*? pt=(\d+)/;
    ok(defined $ct && $ct < 3000, "$name: the stream was cut after " . ($ct // '?') . ' tokens');
    is($rem1, 100000 - ($pt // 0) - 3000, "$name: admission reserved prompt + max_tokens");
    # the correction reaches the window when the request's end is processed
    # (Redis: asynchronously); each probe's own final charge adds up
    $pt //= 0;
    $ct //= 0;
    my ($rem2, $want, $prev, $t0) = (undef, undef, 0, time);
    while (time - $t0 < 5) {
        my $r = chat($t2, $who, max_tokens => 5);
        $rem2 = $r->{headers}{'x-ratelimit-remaining-tokens'};
        $want = 100000 - ($pt + $ct) - $prev - ($pt + 5);
        last if defined $rem2 && $rem2 == $want;
        $prev += $r->{json}{usage}{total_tokens} // 0;
        sleep 0.2;
    }
    is($rem2, $want, "$name: then only the $ct generated tokens stay charged (the next request sees it)");
    ok(time - $t0 < 1, sprintf('%s: within %.2f s', $name, time - $t0));
}

# Checks the x-ratelimit-* headers of one response against a limit; returns
# a list of what is wrong.
sub bad_headers {
    my ($h, $kind, $limit, $other) = @_;
    my @bad;
    my $l = $h->{"x-ratelimit-limit-$kind"};
    my $rem = $h->{"x-ratelimit-remaining-$kind"};
    my $reset = $h->{"x-ratelimit-reset-$kind"};
    push @bad, "limit-$kind " . ($l // 'missing') unless defined $l && $l eq $limit;
    push @bad, "remaining-$kind " . ($rem // 'missing')
        unless defined $rem && $rem =~ /^\d+$/ && $rem <= $limit;
    my $ms = dur_ms($reset);
    push @bad, "reset-$kind " . ($reset // 'missing')
        unless defined $ms && $ms <= 61_000;
    push @bad, "x-ratelimit-limit-$other present (that limit is not set)"
        if exists $h->{"x-ratelimit-limit-$other"};
    return @bad;
}

# Clients spread over the servers, each sending requests of tenant $who
# (a short pause after a refusal) until it has been refused for $settle
# seconds (so that room freed by finishing requests is taken again), or
# after $max seconds; returns every response as { st, srv, usage, h (the
# x-ratelimit-* headers and Retry-After), err }.
sub hammer {
    my ($who, $n, $settle, $servers, %o) = @_;
    my $max = 30;
    my $t0 = time;
    my @res = Dsv4Nginx::parallel($n, sub {
        my ($i) = @_;
        my $srv = $i % @$servers;
        my $t = $servers->[$srv];
        my (@out, $refused);
        while (time - $t0 < $max) {
            my $r = chat($t, $who, %o);
            my %h = map { $_ => $r->{headers}{$_} }
                    grep { /^(x-ratelimit-|retry-after$)/ } keys %{ $r->{headers} };
            push @out, { st => $r->{status}, srv => $srv, h => \%h,
                         usage => $r->{json} && $r->{json}{usage},
                         err => $r->{json} && $r->{json}{error} };
            next if $r->{status} == 200;
            $refused //= time;
            last if time - $refused > $settle;
            sleep 0.02;
        }
        return \@out;
    });
    return map { ref $_ eq 'ARRAY' ? @$_ : ($_) } @res;
}

# tpm over a fleet (or one host): the shared checks
sub tpm_test {
    my ($name, $servers) = @_;
    my @res = hammer('tok', 6, 1.5, $servers);
    my @ok = grep { ($_->{st} // 0) == 200 } @res;
    my @rej = grep { ($_->{st} // 0) == 429 } @res;
    my @other = grep { !defined $_->{st} || ($_->{st} != 200 && $_->{st} != 429) } @res;
    ok(!@other, "$name: every answer is 200 or 429") or diag($J->encode([@other[0 .. ($#other > 4 ? 4 : $#other)]]));
    my $P = @ok ? $ok[0]{usage}{prompt_tokens} : 0;
    my $R = $P + $MT;
    my $acc = 0;
    $acc += $_->{usage}{total_tokens} // 0 for @ok;
    cmp_ok($acc, '<=', $TPM + $R, "$name: accepted tokens $acc <= limit $TPM + one reservation $R");
    cmp_ok($acc, '>=', 0.95 * $TPM - $R, "$name: accepted tokens $acc >= 0.95 x $TPM - $R");
    cmp_ok(scalar @rej, '>', 0, "$name: the rest refused (" . scalar(@rej) . ' x 429, '
           . scalar(@ok) . ' x 200)');
    if (@$servers > 1) {
        ok((grep { $_->{srv} == 0 } @ok) && (grep { $_->{srv} == 1 } @ok),
           "$name: both servers admitted requests");
    }

    my (@bad_ok, @bad_rej);
    for (@ok) {
        push @bad_ok, bad_headers($_->{h}, 'tokens', $TPM, 'requests');
    }
    for (@rej) {
        my @b = bad_headers($_->{h}, 'tokens', $TPM, 'requests');
        my $ra = $_->{h}{'retry-after'};
        push @b, 'Retry-After ' . ($ra // 'missing') unless defined $ra && $ra =~ /^\d+$/
            && $ra >= 1 && $ra <= 61;
        my $e = $_->{err} || {};
        push @b, 'code ' . ($e->{code} // 'none') unless ($e->{code} // '') eq 'rate_limit_exceeded';
        push @b, 'type ' . ($e->{type} // 'none') unless ($e->{type} // '') eq 'tokens';
        if (($e->{message} // '') =~ /tenant tok .*\btpm\b.*limit (\d+), used (\d+), requested (\d+)/) {
            push @b, "message limit $1" unless $1 == $TPM;
            push @b, "message requested $3, expected $R (prompt + max_tokens)" unless $3 == $R;
            push @b, "message used $2 + requested $3 fits" unless $2 + $3 > $TPM;
        } else {
            push @b, 'message ' . ($e->{message} // 'none');
        }
        push @bad_rej, @b;
    }
    my %u;
    s/\d+ms\b/Nms/g for @bad_ok, @bad_rej;      # one line per kind of problem
    ok(!@bad_ok, "$name: accepted responses carry sane x-ratelimit-*-tokens headers")
        or diag(join "\n", grep { !$u{$_}++ } @bad_ok);
    %u = ();
    ok(!@bad_rej, "$name: 429s carry Retry-After, x-ratelimit-*-tokens and the OpenAI body")
        or diag(join "\n", grep { !$u{$_}++ } @bad_rej);
    my $rm = 0;
    $rm += $_->metric_sum('dsv4:tenant_rejected_total', tenant => 'tok', reason => 'tpm') // 0
        for @$servers;
    is($rm, scalar @rej, "$name: dsv4:tenant_rejected_total{reason=\"tpm\"} counts the 429s");
    return ($P, scalar @ok, scalar @rej);
}

# ---- tpm --------------------------------------------------------------------

{
    my $r = chat($A, 'small');
    is($r->{status}, 429, 'a cost over the whole limit (tpm=50): 429');
    ok(!exists $r->{headers}{'retry-after'}, 'without Retry-After (waiting cannot help)');
    like($r->{json} && $r->{json}{error}{message} // '', qr/limit 50, used 0, requested \d+/,
         'the message says so');
}

my ($P, $nok, $nrej) = tpm_test('tpm, redis, 2 servers', [$A, $B]);
{
    # (nginx may log a request just after its client saw the response)
    my @log;
    my $deadline = time + 10;
    do {
        @log = grep { ($_->{tenant} // '') eq 'tok' } $A->access_entries, $B->access_entries;
        sleep 0.05 if @log < $nok + $nrej;
    } while (@log < $nok + $nrej && time < $deadline);
    my $pass = grep { ($_->{tenant} // '') eq 'tok' && ($_->{ls} // '') eq 'PASSED' } @log;
    my $rej = grep { ($_->{tenant} // '') eq 'tok' && ($_->{ls} // '') eq 'REJECTED' } @log;
    is($pass, $nok, 'access log: $dsv4_limit_status PASSED for each accepted request');
    is($rej, $nrej, 'access log: REJECTED for each 429');
    my @pt = grep { ($_->{tenant} // '') eq 'tok' && $_->{st} eq '200' } @log;
    ok(@pt && !grep({ ($_->{pt} // '') ne $P } @pt), "access log: \$dsv4_prompt_tokens $P");
    like($A->read_file('error.log'), qr/\[error\].*\btok\b/,
         'rejections logged at dsv4_limit_log_level (error), naming the tenant');
}

{
    my $r = $B->post_json('/v1/messages', { model => 'demo', max_tokens => $MT,
                                            messages => [{ role => 'user', content => $PROMPT }] },
                          'x-api-key' => $K{tok}, 'anthropic-version' => '2023-06-01');
    is($r->{status}, 429, 'tpm spent: /v1/messages refused too');
    is($r->{json} && $r->{json}{type}, 'error', 'Anthropic-shaped: type error');
    is($r->{json} && $r->{json}{error}{type}, 'rate_limit_error', 'error.type rate_limit_error');
    like($r->{headers}{'retry-after'} // '', qr/^\d+$/, 'with Retry-After');
}

reconcile_test('reconciliation, redis', $A, $B, 'rec');

# ---- rpm --------------------------------------------------------------------

{
    my @res = hammer('req', 6, 1, [$A, $B], max_tokens => 1);
    my @ok = grep { ($_->{st} // 0) == 200 } @res;
    my @rej = grep { ($_->{st} // 0) == 429 } @res;
    is(scalar(@ok) + scalar(@rej), scalar @res, 'rpm: every answer is 200 or 429');
    cmp_ok(scalar @ok, '<=', $RPM + 1, 'rpm: accepted ' . scalar(@ok) . " <= $RPM + 1");
    cmp_ok(scalar @ok, '>=', 0.95 * $RPM - 1, 'rpm: accepted ' . scalar(@ok) . " >= 0.95 x $RPM - 1");
    cmp_ok(scalar @rej, '>', 0, 'rpm: the rest refused (' . scalar(@rej) . ' x 429)');
    my (@bad, %u);
    for (@ok) { push @bad, bad_headers($_->{h}, 'requests', $RPM, 'tokens') }
    for (@rej) {
        push @bad, bad_headers($_->{h}, 'requests', $RPM, 'tokens');
        my $ra = $_->{h}{'retry-after'};
        push @bad, 'Retry-After ' . ($ra // 'missing')
            unless defined $ra && $ra =~ /^\d+$/ && $ra >= 1 && $ra <= 61;
        push @bad, 'remaining-requests ' . $_->{h}{'x-ratelimit-remaining-requests'} . ' on a 429'
            if ($_->{h}{'x-ratelimit-remaining-requests'} // 0) > 0;
        my $e = $_->{err} || {};
        push @bad, 'type ' . ($e->{type} // 'none') unless ($e->{type} // '') eq 'requests';
        push @bad, 'message ' . ($e->{message} // 'none')
            unless ($e->{message} // '') =~ /tenant req .*\brpm\b.*limit $RPM\b/;
    }
    s/\d+ms\b/Nms/g for @bad;
    ok(!@bad, 'rpm: x-ratelimit-*-requests headers, Retry-After and the body')
        or diag(join "\n", grep { !$u{$_}++ } @bad);
    my $rm = 0;
    $rm += $_->metric_sum('dsv4:tenant_rejected_total', tenant => 'req', reason => 'rpm') // 0
        for $A, $B;
    is($rm, scalar @rej, 'dsv4:tenant_rejected_total{reason="rpm"} counts them');
}

# ---- concurrency -------------------------------------------------------------

sub open_stream {
    my ($t, $who) = @_;
    my $s = $t->start('POST', '/v1/chat/completions',
                      # ~4 s of tokens at least (the demo model's context is 4096)
                      $J->encode({ model => 'demo', stream => JSON::PP::true, max_tokens => 4000,
                                   messages => [{ role => 'user', content => $PROMPT }] }),
                      'Content-Type' => 'application/json', Authorization => "Bearer $K{$who}");
    # a 200 once a first token arrived; anything else at EOF
    my $raw = $t->read_until($s, sub { $_[0] =~ m{^HTTP/1\.1 200} && $_[0] =~ /data: \{/ }, 15);
    my $r = Dsv4Nginx::parse_response($raw);
    return ($s, $r);
}

{
    # all at once: exactly $CONC of 6 get a stream
    my $t0 = time;
    my @res = Dsv4Nginx::parallel(6, sub {
        my ($i) = @_;
        my ($s, $r) = open_stream(($A, $B)[$i % 2], 'conc');
        my $left = $t0 + 2 - time;
        sleep $left if $left > 0;         # every stream is held at once
        close $s;
        return { st => $r->{status}, err => $r->{json} && $r->{json}{error} };
    });
    my @st = sort map { $_->{st} // 0 } @res;
    is(scalar(grep { $_ == 200 } @st), $CONC, "concurrency: $CONC of 6 simultaneous streams run");
    is(scalar(grep { $_ == 429 } @st), 6 - $CONC, 'the others get 429') or diag("@st");
    my @bad = grep { ($_->{st} // 0) == 429 && (($_->{err} || {})->{message} // '') !~ /concurren/ } @res;
    ok(!@bad, 'the 429 message names the concurrency limit') or diag($J->encode(\@bad));

    # one on each server; the third is refused on either
    my $deadline = time + 10;
    my ($s1, $r1);
    while (time < $deadline) {        # the leases of the cut streams end
        ($s1, $r1) = open_stream($A, 'conc');
        last if $r1->{status} == 200;
        close $s1;
        sleep 0.1;
    }
    is($r1->{status}, 200, 'stream 1 on A');
    my ($s2, $r2) = open_stream($B, 'conc');
    is($r2->{status}, 200, 'stream 2 on B');
    my ($s3, $r3) = open_stream($A, 'conc');
    is($r3->{status}, 429, 'stream 3 on A: 429');
    my ($s4, $r4) = open_stream($B, 'conc');
    is($r4->{status}, 429, 'stream 3 on B: 429');
    is($r4->{json} && $r4->{json}{error}{type}, 'requests', 'type requests');
    is($r4->{headers}{'retry-after'}, 1, 'Retry-After: 1 (when a stream ends is unknown)');
    close $_ for $s3, $s4;

    close $s1;
    my ($st, $t1) = (0, time);
    while (time - $t1 < 5) {
        $st = chat($B, 'conc', max_tokens => 2)->{status};
        last if $st == 200;
        sleep 0.05;
    }
    is($st, 200, sprintf('after closing stream 1 a new request passes (%.2f s)', time - $t1));
    # (that request's lease ends when its finish reaches Redis: soon after)
    my ($s5, $r5);
    $t1 = time;
    while (time - $t1 < 5) {
        ($s5, $r5) = open_stream($A, 'conc');
        last if $r5->{status} == 200;
        close $s5;
        sleep 0.05;
    }
    is($r5->{status}, 200, 'and a new stream runs');
    my ($s6, $r6) = open_stream($B, 'conc');
    is($r6->{status}, 429, 'while the limit holds for the next one');
    close $_ for $s2, $s5, $s6;
}

# a client that waits for each answer before sending the next never
# exceeds concurrency=1, whichever server it uses, streamed or not
{
    my %st;
    for my $i (1 .. 150) {
        my $r = chat($i % 2 ? $A : $B, 'seq', max_tokens => 1, $i % 3 ? () : (stream => JSON::PP::true));
        $st{$r->{status}}++;
    }
    is(join(' ', map { "$_ x $st{$_}" } sort keys %st), '200 x 150',
       'concurrency=1: 150 requests one after the other all pass');
}

# ---- daily budget ---------------------------------------------------------------

{
    my ($acc, $r) = (0, undef);
    for (1 .. 20) {
        $r = chat($_ % 2 ? $A : $B, 'day', max_tokens => 20);
        last if $r->{status} != 200;
        $acc += $r->{json}{usage}{total_tokens};
    }
    is($r->{status}, 429, "daily=$DAILY: refused once spent");
    my $R = $P + 20;
    cmp_ok($acc, '<=', $DAILY, "accepted $acc <= $DAILY");
    cmp_ok($acc, '>', $DAILY - $R, "accepted $acc > $DAILY - one reservation");
    like($r->{json}{error}{message} // '', qr/dai/i, 'the message names the daily budget');
    my $ra = $r->{headers}{'retry-after'} // -1;
    my $midnight = 86400 - time % 86400;
    ok($ra >= 1 && $ra <= $midnight + 2, "Retry-After $ra: until 00:00 UTC ($midnight s)");
}

# ---- dsv4_limit_status, dry run -------------------------------------------------

{
    is(chat($A, 'st', path => '/s503/v1/chat/completions', max_tokens => 1)->{status}, 200,
       'rpm=1: first request');
    my $r = chat($B, 'st', path => '/s503/v1/chat/completions', max_tokens => 1);
    is($r->{status}, 503, 'dsv4_limit_status 503: the second gets 503');
    ok(defined $r->{headers}{'retry-after'}, 'with Retry-After');

    my @st;
    for my $i (1 .. 6) {
        push @st, chat($i % 2 ? $A : $B, 'dry', path => '/dry/v1/chat/completions',
                       max_tokens => 1, id => "dry-$i")->{status};
    }
    is("@st", '200 200 200 200 200 200', 'dry run, rpm=3: every request served');
    my $log = Dsv4Nginx::logged_ids([$A, $B], [map { "dry-$_" } 1 .. 6]);
    my %ls = map { $_ => $log->{$_}{ls} } keys %$log;
    is(join(' ', map { $ls{"dry-$_"} // 'none' } 1 .. 6),
       'PASSED PASSED PASSED REJECTED_DRY_RUN REJECTED_DRY_RUN REJECTED_DRY_RUN',
       '$dsv4_limit_status: PASSED x 3, then REJECTED_DRY_RUN');
    my $rm = 0;
    $rm += $_->metric_sum('dsv4:tenant_rejected_total', tenant => 'dry', reason => 'rpm') // 0
        for $A, $B;
    is($rm, 3, 'dry run: dsv4:tenant_rejected_total counts the 3 that would have been refused');
}

# ---- Redis down: fail open / fail closed --------------------------------------

{
    is(chat($A, 'fo', max_tokens => 1)->{status}, 200, 'fail-open tenant, Redis up');
    $redis->stop;
    my @st;
    for my $i (1 .. 20) {
        push @st, chat($i % 2 ? $A : $B, 'fo', max_tokens => 1, id => "fo-$i")->{status};
    }
    is(scalar(grep { $_ == 200 } @st), 20, 'Redis down, dsv4_limit_fail open: every request served')
        or diag("@st");
    my $log = Dsv4Nginx::logged_ids([$A, $B], [map { "fo-$_" } 1 .. 20]);
    my %ls = map { $_ => $log->{$_}{ls} } keys %$log;
    my @fo = grep { ($ls{"fo-$_"} // '') eq 'FAILED_OPEN' } 1 .. 20;
    is(scalar @fo, 20, '$dsv4_limit_status FAILED_OPEN for each')
        or diag(join ' ', map { $ls{"fo-$_"} // 'none' } 1 .. 20);
    cmp_ok($A->metric_sum('dsv4:limit_redis_failures_total') // 0, '>=', 10,
           'A: dsv4:limit_redis_failures_total counts them');
    cmp_ok($B->metric_sum('dsv4:limit_redis_failures_total') // 0, '>=', 10, 'B too');
    my $w = grep { /\[warn\]/ && /redis|limit/i } split /\n/, $A->read_file('error.log');
    cmp_ok($w, '>=', 1, 'a [warn] in error.log');
    # one line per cause (connect, connection lost, the zone) per worker
    cmp_ok($w, '<=', 6, "not one per request ($w for 10 requests to 2 workers)");

    my $r = chat($A, 'fo', max_tokens => 1, path => '/closed/v1/chat/completions');
    is($r->{status}, 503, 'dsv4_limit_fail closed: 503');
    like($r->{headers}{'retry-after'} // '', qr/^\d+$/, 'with Retry-After');
    ok($r->{json} && $r->{json}{error}, 'and an OpenAI error body');
    is(chat($B, 'fo', max_tokens => 1, path => '/closed/v1/chat/completions')->{status}, 503,
       'on B too');

    ok($redis->start, 'redis-server back (empty)');
    my $deadline = time + 15;
    my $back = 0;
    my $i = 0;
    while (time < $deadline && !$back) {
        $i++;
        chat($A, 'fo', max_tokens => 1, id => "back-$i");
        my $l = Dsv4Nginx::logged_ids([$A], ["back-$i"], 2);
        $back = ($l->{"back-$i"}{ls} // '') eq 'PASSED';
        sleep 0.2 unless $back;
    }
    ok($back, 'Redis back: requests are counted again (PASSED)');
}

$A->finish;
$B->finish;

# ---- shm zone full: more tenants than fit in the smallest zone ----------------------

{
    my $Z = Dsv4Nginx->standard(access_log => $LOG, http => "    dsv4_limit_zone zone=z:32k;\n",
                                api => "dsv4_keys $kf; dsv4_limit zone=z;",
                                server => "        location = /closed/v1/chat/completions {"
                                        . " dsv4_api chat_completions; dsv4_keys $kf; dsv4_limit zone=z;"
                                        . " dsv4_limit_fail closed; }\n");
    ok($Z->run, 'server Z: a 32k shm zone');
    my (@st, @cl);
    for my $i (0 .. 39) {
        my $who = sprintf 'z%02d', $i;
        push @st, chat($Z, $who, max_tokens => 1, id => "zone-$who")->{status};
        push @cl, chat($Z, $who, max_tokens => 1, path => '/closed/v1/chat/completions')->{status};
    }
    ok(waitpid($Z->{pid}, WNOHANG) == 0, 'the zone filled up: nginx still runs');
    is(scalar(grep { $_ != 200 } @st), 0, 'dsv4_limit_fail open: every tenant served') or diag("@st");
    my $log = Dsv4Nginx::logged_ids([$Z], [map { sprintf 'zone-z%02d', $_ } 0 .. 39]);
    my %ls = map { $_ => $log->{$_}{ls} } keys %$log;
    my @fo = grep { ($ls{sprintf 'zone-z%02d', $_} // '') eq 'FAILED_OPEN' } 0 .. 39;
    cmp_ok(scalar @fo, '>', 0, 'the tenants that did not fit: FAILED_OPEN (' . scalar(@fo) . ' of 40)');
    cmp_ok(scalar @fo, '<', 40, 'the first ones fit');
    my @c503 = grep { $_ == 503 } @cl;
    is(scalar(@c503), scalar(@fo), 'dsv4_limit_fail closed: 503 for as many') or diag("@cl");
    cmp_ok($Z->metric_sum('dsv4:limit_zone_full_total', zone => 'z') // 0, '>=', @fo + @c503,
           'dsv4:limit_zone_full_total{zone="z"} counts them');
    like($Z->read_file('error.log'), qr/\[warn\].*\bz\b/, 'a [warn] names the zone');
    is($Z->http('GET', '/health')->{status}, 200, '/health');
    $Z->finish;
}

# ---- shm: one host, two workers, no Redis -------------------------------------------

my $S = Dsv4Nginx->standard(workers => 2, access_log => $LOG,
                            http => "    dsv4_limit_zone zone=s:1m;\n"
                                  . "    dsv4_limit_zone zone=e:1m estimate=10 tokens=completion;\n"
                                  . "    dsv4_limit_zone zone=p:1m tokens=prompt;\n",
                            api => "dsv4_keys $kf; dsv4_limit zone=s;",
                            server => join('', map {
                                "        location = /$_->[0]/v1/chat/completions { dsv4_api chat_completions;"
                                . " dsv4_keys $kf; dsv4_limit zone=$_->[1]; }\n" } ['est', 'e'], ['pro', 'p']));
ok($S->run, 'server S: shm zone, 2 workers');
tpm_test('tpm, shm, 2 workers', [$S]);
reconcile_test('reconciliation, shm', $S, $S, 'rec2');

# the POST APIs in scope count against rpm, generating or not (/tokenize,
# /detokenize cost 0 tokens); GET /v1/models is not limited (only keyed)
{
    my %k = (Authorization => "Bearer $K{mod}");
    my @st;
    push @st, $S->post_json('/tokenize', { model => 'demo', prompt => 'hi' }, %k)->{status};
    push @st, $S->post_json('/detokenize', { model => 'demo', tokens => [100, 200] }, %k)->{status};
    push @st, $S->post_json('/tokenize', { model => 'demo', prompt => 'hi' }, %k)->{status};
    my $r = $S->post_json('/tokenize', { model => 'demo', prompt => 'hi' }, %k);
    push @st, $r->{status};
    is("@st", '200 200 200 429', 'rpm=3: POST /tokenize and /detokenize count as requests');
    is($r->{json} && $r->{json}{error}{code}, 'rate_limit_exceeded', 'the 4th: rate_limit_exceeded');
    my $m = $S->http('GET', '/v1/models', undef, %k);
    is($m->{status}, 200, 'GET /v1/models is not limited (rpm spent)');
    ok(!exists $m->{headers}{'x-ratelimit-limit-requests'}, 'and carries no x-ratelimit-* headers');
    is($S->http('GET', '/v1/models')->{status}, 401, 'but needs the key');
}

# estimate=N (min(N, max_tokens) reserved) and tokens=completion / prompt
{
    my $r = chat($S, 'est', path => '/est/v1/chat/completions', max_tokens => 40);
    is($r->{status}, 200, 'estimate=10 tokens=completion: max_tokens 40 admitted under tpm=100');
    is($r->{headers}{'x-ratelimit-remaining-tokens'}, 90, 'reserving 10 completion tokens, no prompt');
    my $c1 = $r->{json}{usage}{completion_tokens} // 0;
    my $r2 = chat($S, 'est', path => '/est/v1/chat/completions', max_tokens => 40);
    is($r2->{headers}{'x-ratelimit-remaining-tokens'}, 100 - $c1 - 10,
       "then the first one's $c1 completion tokens are charged, and 10 reserved");
    my $r3 = chat($S, 'pro', path => '/pro/v1/chat/completions', max_tokens => 40);
    is($r3->{headers}{'x-ratelimit-remaining-tokens'}, 1000 - $r3->{json}{usage}{prompt_tokens},
       'tokens=prompt: only the prompt counts');
}
$S->finish;

# ---- the shipped example: conf.d/limits.conf included in conf.d/dsv4.conf -------------

{
    my $root = $Dsv4Nginx::ROOT;
    my $prefix = tempdir('dsv4-limconf-XXXXXX', TMPDIR => 1, CLEANUP => 1);
    mkdir "$prefix/$_" for qw(build .cache conf.d);
    symlink(Dsv4Nginx::module_path(), "$prefix/build/ngx_dsv4_module.so") or die;
    symlink(Dsv4Nginx::model_dir('demo'), "$prefix/.cache/demo-model") or die;
    my $port = Dsv4Nginx::free_port();
    my $conf = do { local (@ARGV, $/) = "$root/conf.d/dsv4.conf"; <> };
    my $lconf = do { local (@ARGV, $/) = "$root/conf.d/limits.conf"; <> };
    $conf =~ s/listen 127\.0\.0\.1:8080;/listen 127.0.0.1:$port;/;
    ok($conf =~ s/^http \{\n/http {\n    include limits.conf;\n/m, 'include limits.conf in dsv4.conf');
    for (['dsv4.conf', $conf], ['limits.conf', $lconf]) {
        open my $fh, '>', "$prefix/conf.d/$_->[0]" or die;
        print $fh $_->[1];
        close $fh;
    }
    my $g = 'daemon off;' . ($> == 0 ? ' user root;' : '') . Dsv4Nginx::core_directives($prefix);
    my $out = `nginx -t -p $prefix/ -c conf.d/dsv4.conf -g '$g' 2>&1`;
    is($?, 0, 'nginx -t accepts conf.d/dsv4.conf + conf.d/limits.conf') or diag($out);
    my $pid = fork();
    if ($pid == 0) {
        open STDERR, '>', "$prefix/stderr.log";
        exec('nginx', '-p', "$prefix/", '-c', 'conf.d/dsv4.conf', '-g', $g) or POSIX::_exit(127);
    }
    my $t = Dsv4Nginx->new(port => $port);
    my $t0 = time;
    sleep 0.1 while time - $t0 < 30 && $t->http('GET', '/health')->{status} != 200;
    my $r = $t->post_json('/v1/chat/completions', { model => 'deepseek-chat', max_tokens => 3,
                                                    messages => [{ role => 'user', content => 'Hi' }] });
    is($r->{status}, 200, 'the example serves the demo model');
    is($r->{headers}{'x-ratelimit-limit-requests'}, 600, 'with its rpm=600 (x-ratelimit-limit-requests)');
    is($r->{headers}{'x-ratelimit-limit-tokens'}, 200000, 'and tpm=200000');
    is($t->metric_sum('dsv4:tenant_requests_total', tenant => 'anonymous'), 1,
       'metered as tenant anonymous');
    kill 'QUIT', $pid;
    waitpid($pid, 0);
    my $log = do { local (@ARGV, $/) = "$prefix/build/dsv4-error.log"; <> } // '';
    my @bad = grep { /\[(alert|crit|emerg)\]/ } split /\n/, $log;
    ok(!@bad, 'its error.log is clean') or diag(join "\n", @bad, Dsv4Nginx::crash_report($prefix));
}

$redis->stop;
done_testing;
