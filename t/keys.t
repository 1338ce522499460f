#!/usr/bin/perl
# API keys (docs/limits.md): dsv4_keys FILE and dsv4_keys redis.
#  - build/dsv4-key new / hash: a raw key on stderr, its key-file line on
#    stdout; the line works in nginx
#  - a missing key is 401 missing_api_key (WWW-Authenticate: Bearer),
#    OpenAI- and Anthropic-shaped (Authorization: Bearer / x-api-key); an
#    unknown key 401 invalid_api_key
#  - models=: 404 model_not_found on other models; a model's name covers
#    its aliases, an alias only itself
#  - a key deleted from the file is refused after `nginx -s reload`
#    (SIGHUP), a key added is accepted; a reload with a bad file is refused
#    and the old keys keep serving
#  - a key file with bad lines fails `nginx -t` with FILE:LINE: (and never
#    echoes a whole key hash)
#  - keys as Redis hashes: found, limits from the hash, limited to models,
#    revoked=1, unknown, malformed, Redis frozen (503 after the timeout; the
#    event loop keeps answering) or stopped (503, fail closed), Redis back
#  - raw keys appear in no file nginx wrote (error.log at debug level, the
#    access log, temp files) nor in Redis nor /metrics; tenant ids do

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Digest::SHA qw(sha256_hex);
use Time::HiRes qw(time sleep);
use Dsv4Nginx;
use Dsv4Redis;

ok(Dsv4Redis->available, 'redis-server and redis-cli are installed')
    or die "t/keys.t needs redis-server (apt-get install redis-server)\n";

my $LOG = 'id=$http_x_test_id st=$status tenant=$dsv4_tenant'
        . ' pt=$dsv4_prompt_tokens ct=$dsv4_completion_tokens';

# raw keys: random, so that a grep can only find them where they leaked
my $rnd = join '', map { sprintf '%04x', int rand 65536 } 1 .. 6;
my %K = map { $_ => "sk-t$_-$rnd" } qw(alice bob carol dave erin frank gina hank ivy unknown);

# dave's key is made by build/dsv4-key (the raw key on stderr, the line on
# stdout), as an operator would
my $keytool = "$Dsv4Nginx::ROOT/build/dsv4-key";
system("make -s -C '$Dsv4Nginx::ROOT' build/dsv4-key >&2") unless -x $keytool;
my ($dave_line, $dave_err) = ('', '');
{
    my $err = "/tmp/dsv4-keys-t-$$.err";
    $dave_line = `'$keytool' new dave rpm=100 2>'$err'`;
    $dave_err = do { local (@ARGV, $/) = $err; <> } // '';
    unlink $err;
}
ok($dave_err =~ /(sk-\S+)/ && $dave_line =~ /^[0-9a-f]{64} dave rpm=100\n\z/,
   'build/dsv4-key new: a raw key on stderr, a key file line on stdout')
    or diag("stdout: $dave_line\nstderr: $dave_err");
$K{dave} = $1 if $dave_err =~ /(sk-\S+)/;
is(`printf '%s\\n' '$K{dave}' | '$keytool' hash`, substr($dave_line, 0, 64) . "\n",
   'build/dsv4-key hash (a key on stdin) prints the same hash');
my @raw = values %K;

sub keyline { my ($who, $rest) = @_; return sha256_hex($K{$who}) . " $who" . ($rest // '') . "\n" }

sub write_keys {
    my ($path, @lines) = @_;
    open my $fh, '>', $path or die "$path: $!";
    print $fh "# t/keys.t\n\n", @lines;
    close $fh;
}

my $msgs = [{ role => 'user', content => 'Hello there' }];
sub chat {
    my ($t, $key, %o) = @_;
    my %h = defined $key ? (Authorization => "Bearer $key") : ();
    $h{'X-Test-Id'} = delete $o{id} if $o{id};
    return $t->post_json('/v1/chat/completions',
                         { model => 'demo', messages => $msgs, max_tokens => 3, %o }, %h);
}
sub messages {
    my ($t, $key, %o) = @_;
    my %h = defined $key ? ('x-api-key' => $key, 'anthropic-version' => '2023-06-01') : ();
    return $t->post_json('/v1/messages',
                         { model => 'demo', messages => $msgs, max_tokens => 3, %o }, %h);
}
sub openai_error {
    my ($r, $status, $code, $name) = @_;
    is($r->{status}, $status, "$name: $status");
    my $e = $r->{json} && $r->{json}{error};
    is(ref $e && $e->{code}, $code, "$name: code $code") or diag($r->{body});
    ok(ref $e && defined $e->{message} && length $e->{message}, "$name: a message");
    ok(ref $e && exists $e->{param} && exists $e->{type}, "$name: OpenAI error shape");
}

# ---- keys from a file ------------------------------------------------------

# a relative path: from the configuration's directory (the test's prefix)
my $t = Dsv4Nginx->standard(workers => 1, log_level => 'debug', access_log => $LOG,
                            api => 'dsv4_keys keys.txt;');
my $kf = $t->dir . '/keys.txt';
write_keys($kf, keyline('alice'), keyline('bob', ' models=deepseek-chat,tiny'),
           keyline('carol', ' rpm=1000'));
ok($t->run, 'nginx with dsv4_keys FILE');

# missing key
my $r = chat($t, undef);
openai_error($r, 401, 'missing_api_key', 'chat without a key');
is($r->{json}{error}{type}, 'invalid_request_error', 'type invalid_request_error');
is($r->{headers}{'www-authenticate'}, 'Bearer', 'WWW-Authenticate: Bearer (RFC 6750)');
$r = $t->http('GET', '/v1/models');
is($r->{status}, 401, 'GET /v1/models without a key: 401');
$r = $t->post_json('/tokenize', { model => 'demo', prompt => 'hi' });
is($r->{status}, 401, 'POST /tokenize without a key: 401');
$r = $t->post_json('/v1/chat/completions', { model => 'demo', messages => $msgs },
                   Authorization => 'Bearer ');
is($r->{status}, 401, 'an empty bearer token: 401');
$r = $t->post_json('/v1/chat/completions', { model => 'demo', messages => $msgs },
                   Authorization => "Basic $K{alice}");
is($r->{status}, 401, 'a Basic credential is not a key: 401');
$r = messages($t, undef);
is($r->{status}, 401, 'messages without x-api-key: 401');
is($r->{json} && $r->{json}{type}, 'error', 'Anthropic shape: type error');
is($r->{json} && $r->{json}{error}{type}, 'authentication_error', 'error.type authentication_error')
    or diag($r->{body});
ok($r->{json} && length($r->{json}{error}{message} // ''), 'with a message');
is($t->http('GET', '/health')->{status}, 200, '/health needs no key (no dsv4_keys there)');

# unknown key
openai_error(chat($t, $K{unknown}), 401, 'invalid_api_key', 'unknown key');
$r = messages($t, $K{unknown});
is($r->{status}, 401, 'messages, unknown key: 401');
is($r->{json} && $r->{json}{error}{type}, 'authentication_error', 'authentication_error');
openai_error(chat($t, "$K{alice}x"), 401, 'invalid_api_key', 'a known key plus one byte');

# good keys, both header styles
$r = chat($t, $K{alice}, id => 'alice-chat');
is($r->{status}, 200, 'alice: Bearer key accepted') or diag($r->{body});
$r = messages($t, $K{alice});
is($r->{status}, 200, 'alice: x-api-key accepted on /v1/messages') or diag($r->{body});
is($t->http('GET', '/v1/models', undef, Authorization => "Bearer $K{alice}")->{status}, 200,
   'alice: GET /v1/models');

# models=
$r = chat($t, $K{bob}, model => 'deepseek-chat', id => 'bob-chat');
is($r->{status}, 200, 'bob: an allowed model (deepseek-chat)') or diag($r->{body});
$r = $t->post_json('/v1/completions', { model => 'tiny', prompt => [1, 2, 3], max_tokens => 2 },
                   Authorization => "Bearer $K{bob}");
is($r->{status}, 200, 'bob: an allowed model (tiny)') or diag($r->{body});
$r = chat($t, $K{bob}, model => 'demo');
openai_error($r, 404, 'model_not_found', 'bob: a model the key may not use');
like($r->{json}{error}{message} // '', qr/does not exist or you do not have access to it/,
     'OpenAI\'s wording');
$r = messages($t, $K{bob}, model => 'demo');
is($r->{status}, 404, 'bob: 404 on /v1/messages too');
is($r->{json} && $r->{json}{type}, 'error', 'Anthropic-shaped');

# revoke carol, add dave: nginx -s reload
is(chat($t, $K{carol})->{status}, 200, 'carol before the reload');
is(chat($t, $K{dave})->{status}, 401, 'dave before the reload');
write_keys($kf, keyline('alice'), keyline('bob', ' models=deepseek-chat,tiny'), $dave_line,
           keyline('hank', ' models=demo'));
ok($t->reload, 'nginx -s reload (SIGHUP): new workers up');
openai_error(chat($t, $K{carol}), 401, 'invalid_api_key', 'carol after the reload (revoked)');
is(chat($t, $K{dave}, id => 'dave-chat')->{status}, 200, 'dave (a dsv4-key line) after the reload');
is(chat($t, $K{alice})->{status}, 200, 'alice still');
is(chat($t, $K{hank}, model => 'deepseek-reasoner')->{status}, 200,
   'hank (models=demo): a model\'s name covers its aliases');
is($t->post_json('/v1/completions', { model => 'tiny', prompt => [1, 2], max_tokens => 1 },
                 Authorization => "Bearer $K{hank}")->{status}, 404, 'hank: not tiny');
is(chat($t, $K{bob}, model => 'deepseek-reasoner')->{status}, 404,
   'bob (models=deepseek-chat): an alias covers only itself');

# a bad file at reload: refused, the old configuration keeps serving
write_keys($kf, keyline('alice'), "not-a-hash dave\n");
ok(!$t->reload(timeout => 5), 'a reload with a bad key file is refused');
like($t->read_file('error.log'), qr/keys\.txt:4: /, "the error names keys.txt:4 (2 header lines, alice, the bad one)");
is(chat($t, $K{dave})->{status}, 200, 'the old keys still serve');
write_keys($kf, keyline('alice'), keyline('bob', ' models=deepseek-chat,tiny'), $dave_line);

# ---- nginx -t on bad key files ---------------------------------------------

my $h = sha256_hex($K{gina});
my @bad = (
    ['a hash that is not hex', "zz" . substr($h, 2) . " gina\n"],
    ['a hash too short', substr($h, 0, 63) . " gina\n"],
    ['no tenant', "$h\n"],
    ['a tenant with a slash', "$h gi/na\n"],
    ['a tenant over 64 bytes', "$h " . ('g' x 65) . "\n"],
    ['a limit that is not a number', "$h gina rpm=ten\n"],
    ['a negative limit', "$h gina tpm=-5\n"],
    ['an unknown option', "$h gina burst=5\n"],
    ['a duplicate hash', keyline('alice') =~ s/alice/alice2/r],
);
for my $case (@bad) {
    my ($name, $line) = @$case;
    my $c = Dsv4Nginx->standard(api => 'dsv4_keys keys-bad.txt;');
    write_keys($c->dir . '/keys-bad.txt', keyline('alice'), $line);
    my ($rc, $out) = $c->test_conf;
    isnt($rc, 0, "nginx -t fails: $name");
    # write_keys puts 2 header lines first: alice is line 3, the bad one 4
    like($out, qr{keys-bad\.txt:4: \S}, "$name: the message names keys-bad.txt:4") or diag($out);
    unlike($out, qr/[0-9a-f]{64}/, "$name: no whole key hash in the message");
}
{
    my $c = Dsv4Nginx->standard(api => 'dsv4_keys keys-ok.txt;');
    write_keys($c->dir . '/keys-ok.txt', keyline('alice'), keyline('gina', ' rpm=5 tpm=100 concurrency=2'
        . ' daily=1000 monthly=20000 models=demo,tiny'), "   # an indented comment\n");
    my ($rc, $out) = $c->test_conf;
    is($rc, 0, 'nginx -t accepts a good key file (relative path: from the conf directory)')
        or diag($out);
    $c = Dsv4Nginx->standard(api => 'dsv4_keys no-such-keys.txt;');
    ($rc, $out) = $c->test_conf;
    isnt($rc, 0, 'nginx -t fails on a missing key file');
    like($out, qr/no-such-keys\.txt/, 'naming it');
}

# ---- keys in Redis ----------------------------------------------------------

my $redis = Dsv4Redis->new;
ok($redis->start, 'redis-server on 127.0.0.1:' . $redis->port);
my $rk = Dsv4Nginx->standard(access_log => $LOG,
                             http => '    dsv4_redis 127.0.0.1:' . $redis->port
                                   . " timeout=1s prefix=tk:;\n"
                                   . "    dsv4_limit_zone zone=k:1m redis;\n",
                             api => 'dsv4_keys redis; dsv4_limit zone=k;');
ok($rk->run, 'nginx with dsv4_keys redis');
sub rkey { 'tk:key:' . sha256_hex($K{$_[0]}) }
$redis->cli('HSET', rkey('erin'), 'tenant', 'erin', 'rpm', '1000');
$redis->cli('HSET', rkey('frank'), 'tenant', 'frank', 'models', 'tiny');

$r = chat($rk, $K{erin}, id => 'erin-chat');
is($r->{status}, 200, 'erin (Redis hash) accepted') or diag($r->{body});
is(messages($rk, $K{erin})->{status}, 200, 'erin with x-api-key');
openai_error(chat($rk, $K{unknown}), 401, 'invalid_api_key', 'Redis: unknown key');
openai_error(chat($rk, undef), 401, 'missing_api_key', 'Redis: missing key');
openai_error(chat($rk, $K{frank}), 404, 'model_not_found', 'frank: model not in models=');
$r = $rk->post_json('/v1/completions', { model => 'tiny', prompt => [1, 2], max_tokens => 2 },
                    Authorization => "Bearer $K{frank}");
is($r->{status}, 200, 'frank: tiny allowed') or diag($r->{body});
$redis->cli('HSET', rkey('erin'), 'revoked', '1');
openai_error(chat($rk, $K{erin}), 401, 'invalid_api_key', 'erin revoked=1');
$redis->cli('HSET', rkey('erin'), 'revoked', '0');
is(chat($rk, $K{erin})->{status}, 200, 'erin revoked=0: accepted again');
$redis->cli('HSET', rkey('ivy'), 'tenant', 'ivy', 'rpm', '2', 'tpm', '100000');
{
    my @st = map { chat($rk, $K{ivy}, max_tokens => 1)->{status} } 1 .. 3;
    is("@st", '200 200 429', 'ivy: the hash\'s rpm=2 applies');
}
is(chat($rk, $K{erin})->{headers}{'x-ratelimit-limit-requests'}, 1000, 'erin: the hash\'s rpm=1000 in x-ratelimit-limit-requests');
$redis->cli('HSET', rkey('gina'), 'models', 'demo');      # no tenant field
$r = chat($rk, $K{gina});
ok($r->{status} == 401 || $r->{status} >= 500, "a hash without a tenant is refused ($r->{status})");
$redis->cli('DEL', rkey('gina'));
ok(kill(0, $rk->{pid}), 'nginx alive');

# Redis frozen: every call times out; fail closed (503), the event loop is free
$redis->pause;
{
    my $s = $rk->start('POST', '/v1/chat/completions',
                       Dsv4Nginx::json()->encode({ model => 'demo', messages => $msgs, max_tokens => 2 }),
                       'Content-Type' => 'application/json', Authorization => "Bearer $K{erin}");
    my $t0 = time;
    sleep 0.1;
    my $t1 = time;
    my $hr = $rk->http('GET', '/health', undef, -timeout => 5);
    is($hr->{status}, 200, 'Redis frozen: /health answers while a key lookup waits');
    cmp_ok(time - $t1, '<', 0.5, 'before the 1 s Redis timeout ('
           . sprintf('%.3f s', time - $t1) . '): the lookup does not block the worker');
    my $raw = $rk->read_until($s, sub { 0 }, 10);
    close $s;
    $r = Dsv4Nginx::parse_response($raw);
    is($r->{status}, 503, 'Redis frozen: 503 (keys cannot be checked)') or diag($raw);
    cmp_ok(time - $t0, '<', 3, 'after the 1 s timeout, not a hang');
    ok($r->{json} && $r->{json}{error}, 'an OpenAI error body');
}
$redis->resume;
sleep 0.3;

$redis->stop;
$r = chat($rk, $K{erin});
is($r->{status}, 503, 'Redis stopped: 503');
ok($r->{json} && $r->{json}{error}, 'an OpenAI error body');
is(messages($rk, $K{erin})->{status}, 503, 'Redis stopped: 503 on /v1/messages');
is(chat($rk, undef)->{status}, 401, 'Redis stopped: a missing key is still 401');

ok($redis->start, 'redis-server started again (empty)');
$redis->cli('HSET', rkey('erin'), 'tenant', 'erin');
{
    my $deadline = time + 10;
    my $st = 0;
    while (time < $deadline) {
        $st = chat($rk, $K{erin})->{status};
        last if $st == 200;
        sleep 0.2;
    }
    is($st, 200, 'Redis back: keys are checked again');
}

# ---- no raw key anywhere ----------------------------------------------------

my $metrics = $t->http('GET', '/metrics')->{body} . $rk->http('GET', '/metrics')->{body};
$t->stop;
$rk->stop;
my @leaks;
for my $inst ($t, $rk) {
    for my $f ($inst->all_files) {
        open my $fh, '<', $f or next;
        local $/;
        my $text = <$fh>;
        close $fh;
        # nginx's own debug log prints request headers ("http header:
        # "Authorization: ..."): that is nginx, not the module
        $text = join "\n", grep { !/ http header: "/ } split /\n/, $text
            if $f =~ /error\.log$/;
        for my $k (@raw) {
            push @leaks, "$f contains $k" if index($text, $k) >= 0;
            (my $bare = $k) =~ s/^sk-//;
            push @leaks, "$f contains the key's body $bare" if index($text, $bare) >= 0;
        }
    }
}
ok(!@leaks, 'no raw key in any file nginx wrote (error.log at debug level, access.log, temp)')
    or diag(join "\n", @leaks);
ok(length($t->read_file('error.log')) > 10000, 'error.log was written at debug level');
for my $k (@raw) {
    push @leaks, "/metrics contains $k" if index($metrics, $k) >= 0;
}
my $dump = '';
for my $key (grep { length } split /\n/, $redis->cli('--scan') // '') {
    $dump .= "$key " . ($redis->cli('HGETALL', $key) // '') . ($redis->cli('GET', $key) // '');
}
for my $k (@raw) {
    push @leaks, "Redis holds $k" if index($dump, $k) >= 0;
}
ok(!@leaks, 'nor in /metrics nor in Redis') or diag(join "\n", @leaks);

my %seen = map { ($_->{id} // '-') => $_->{tenant} } $t->access_entries, $rk->access_entries;
is($seen{'alice-chat'}, 'alice', 'access log: $dsv4_tenant alice');
is($seen{'bob-chat'}, 'bob', 'access log: bob');
is($seen{'dave-chat'}, 'dave', 'access log: dave (added by the reload)');
is($seen{'erin-chat'}, 'erin', 'access log: erin (a key from Redis)');
my @anon = grep { ($_->{st} // '') eq '401' } $t->access_entries;
ok(@anon && !grep({ ($_->{tenant} // '') ne '-' } @anon), 'refused requests log tenant "-"');

# the refused reload's [emerg] is expected; nothing else
$t->log_clean(undef, qr/\[(alert|crit)\]|\[emerg\](?!.*keys\.txt:4: )|AddressSanitizer|runtime error|LeakSanitizer/);
$rk->log_clean;
$redis->stop;

# ---- the prefix cache follows the keys: per tenant unless told global -------
# (dsv4_cache_scope auto, the default; the side channel of a shared prefix
# cache is the time to first token, seen here as cached_tokens)
my $B = 32;     # the demo model's compress ratios are 4 and 32
for my $scope ('', 'global') {
    my $name = $scope || 'the default scope';
    my $c = Dsv4Nginx->standard(workers => 1, api => 'dsv4_keys keys-cache.txt;',
                                http => "    dsv4_cache on;\n    dsv4_cache_block $B;\n"
                                      . ($scope ? "    dsv4_cache_scope $scope;\n" : ''));
    write_keys($c->dir . '/keys-cache.txt', keyline('alice'), keyline('carol'));
    ok($c->run, "nginx with dsv4_keys and a memory cache, $name");
    my @p = map { 300 + ($_ * 7919 + length $scope) % 60000 } 1 .. 3 * $B + 1;
    my $cmpl = sub {
        my $r = $c->post_json('/v1/completions', { model => 'demo', prompt => \@p, max_tokens => 2,
                                                   temperature => 0 },
                              Authorization => "Bearer $K{$_[0]}");
        is($r->{status}, 200, "$name: $_[0] is served") or diag($r->{body});
        return $r->{json}{usage}{prompt_tokens_details}{cached_tokens} // -1;
    };
    is($cmpl->('alice'), 0, "$name: alice's first request finds nothing cached");
    my $deadline = time + 20;
    sleep 0.05 while ($c->metric('dsv4:cache_written_values_total', 'tier="memory"') || 0) < 3
        && time < $deadline;
    my $carol = $cmpl->('carol');
    if ($scope eq 'global') {
        cmp_ok($carol, '>=', 2 * $B, 'global: carol reuses alice\'s prefix (shared on purpose)');
    } else {
        is($carol, 0, 'by default carol (another tenant) does not see alice\'s prefix');
    }
    cmp_ok($cmpl->('alice'), '>=', 2 * $B, "$name: alice's own prefix is cached for her");
    $c->finish;
    $c->log_clean;
}
done_testing;
