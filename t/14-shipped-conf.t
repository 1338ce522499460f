#!/usr/bin/perl
# conf.d/dsv4.conf works as shipped: the file itself (only the port
# changed), in a prefix laid out like the checkout (build/ with the module,
# .cache/demo-model), serving a streamed chat completion.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Temp qw(tempdir);
use POSIX qw(:sys_wait_h);
use Time::HiRes qw(time sleep);
use Dsv4Nginx qw(model_dir sse_data);

my $root = $Dsv4Nginx::ROOT;
my $prefix = tempdir('dsv4-conf-XXXXXX', TMPDIR => 1, CLEANUP => !$ENV{DSV4_T_LEAVE});
mkdir "$prefix/$_" for qw(build .cache conf.d);
symlink(Dsv4Nginx::module_path(), "$prefix/build/ngx_dsv4_module.so") or die;
symlink(model_dir('demo'), "$prefix/.cache/demo-model") or die;

my $port = Dsv4Nginx::free_port();
open my $in, '<', "$root/conf.d/dsv4.conf" or die;
my $conf = do { local $/; <$in> };
close $in;
ok($conf =~ s/listen 127\.0\.0\.1:8080;/listen 127.0.0.1:$port;/, 'the shipped conf listens on 127.0.0.1:8080');
open my $out, '>', "$prefix/conf.d/dsv4.conf" or die;
print $out $conf;
close $out;

my $g = 'daemon off;' . ($> == 0 ? ' user root;' : '') . Dsv4Nginx::core_directives($prefix);
my $test = `nginx -t -p $prefix/ -c conf.d/dsv4.conf -g '$g' 2>&1`;
is($?, 0, 'nginx -t accepts it') or diag($test);

my $pid = fork();
if ($pid == 0) {
    open STDERR, '>', "$prefix/stderr.log";
    exec 'nginx', '-p', "$prefix/", '-c', 'conf.d/dsv4.conf', '-g', $g;
    POSIX::_exit(127);
}
END { if ($pid) { kill 'QUIT', $pid; waitpid($pid, 0); } }

my $t = Dsv4Nginx->new(port => $port);
my $ready = 0;
my $t0 = time;
while (time - $t0 < 30) {
    my $r = $t->http('GET', '/health');
    if ($r->{status} == 200) { $ready = 1; last; }
    sleep 0.1;
}
ok($ready, 'GET /health 200 once the model is loaded');

my $r = $t->post_json('/v1/chat/completions', { model => 'deepseek-chat', max_tokens => 5, stream => JSON::PP::true,
                                                messages => [{ role => 'user', content => 'Hello' }] });
is($r->{status}, 200, 'a streamed chat completion');
my @ev = sse_data($r->{body});
is($ev[-1], '[DONE]', 'ends with [DONE]');
$r = $t->http('GET', '/v1/models');
ok((grep { $_->{id} eq 'deepseek-reasoner' } @{ $r->{json}{data} }), 'the DeepSeek aliases are declared');

kill 'QUIT', $pid;
waitpid($pid, 0);
is($? >> 8, 0, 'nginx exits cleanly');
$pid = 0;
my $log = do { open my $f, '<', "$prefix/build/dsv4-error.log"; local $/; <$f> // '' };
my @bad = grep { /\[(alert|crit|emerg)\]/ } split /\n/, $log;
ok(!@bad, 'error log clean') or diag(join("\n", @bad, Dsv4Nginx::crash_report($prefix)));

done_testing;
