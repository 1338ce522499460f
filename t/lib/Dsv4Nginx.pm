package Dsv4Nginx;

# A minimal nginx test harness (core Perl only): writes a complete
# nginx.conf that loads the module, starts the stock nginx on a free
# 127.0.0.1 port, talks HTTP/1.1 over plain sockets (chunked bodies are
# decoded, SSE streams can be read incrementally and cut), and stops
# nginx in an END block so that prove can never hang on a leftover child.
#
#   my $t = Dsv4Nginx->new(http => 'dsv4_model demo ...;',
#                          server => 'location /x { dsv4_api ...; }');
#   $t->run;                               # waits for /health == 200
#   my $r = $t->post_json('/v1/chat/completions', {...});
#   is($r->{status}, 200); $r->{json}; $r->{headers}{'content-type'}
#   $t->log_clean;                         # no [alert]/[crit]/[emerg]
#
# Options of new/standard besides http/server/main/workers: log_level
# (error.log level, default info), access_log (a log_format string: the
# requests are logged to access.log in that format; default off), and for
# standard, api (directives added to every API location except /health and
# /metrics, e.g. dsv4_keys + dsv4_limit).  With workers >= 1, $t->reload
# re-reads the configuration (SIGHUP) and waits for the new workers.
#
# Environment: DSV4_MODULE (the .so), DSV4_T_DEMO / DSV4_T_TINY (model
# directories; generated under DSV4_TEST_TMP when unset), DSV4_T_LEAVE=1
# keeps the temporary directory, DSV4_T_VALGRIND=1 runs nginx under
# valgrind (single process; DSV4_T_VALGRIND_OPTS replaces --leak-check=no).

use strict;
use warnings;

use Cwd qw(abs_path);
use Exporter qw(import);
use File::Basename qw(dirname);
use File::Temp qw(tempdir);
use IO::Select;
use IO::Socket::INET;
use JSON::PP;
use POSIX qw(:sys_wait_h);
use Test::More;
use Time::HiRes qw(time sleep);

our @EXPORT_OK = qw(model_dir sse_data json);

our $ROOT = abs_path(dirname(__FILE__) . '/../..');
my @INSTANCES;
my $JSON = JSON::PP->new->utf8->canonical->allow_nonref;

sub json { $JSON }

# Factor for latency bounds: under valgrind an engine step (the unit of
# "promptly") takes tens of times longer; the bounds stay as written
# otherwise.
sub time_scale { $ENV{DSV4_T_VALGRIND} ? 15 : 1 }

sub free_port {
    my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                  Proto => 'tcp', Listen => 1, ReuseAddr => 1)
        or die "no free port: $!";
    my $port = $s->sockport;
    close $s;
    return $port;
}

# A model directory: 'demo' (real vocabulary + V4 test tokenizer) or
# 'tiny' (tiny-a, no tokenizer).  Generated once per test run.
sub model_dir {
    my ($name) = @_;
    my $env = $name eq 'demo' ? 'DSV4_T_DEMO' : 'DSV4_T_TINY';
    return $ENV{$env} if $ENV{$env} && -d $ENV{$env};

    my $base = $ENV{DSV4_TEST_TMP} || '/tmp/dsv4-t-models';
    my $dir = "$base/models/t-$name";
    return $dir if -f "$dir/.complete";

    system('rm', '-rf', $dir);
    system('mkdir', '-p', $dir) == 0 or die "mkdir $dir";
    my $preset = $name eq 'demo' ? 'demo' : 'tiny-a';
    system('/usr/bin/python3', "$ROOT/tests/fixtures/gen_model.py", '--preset',
           $preset, '--out', $dir, '--quiet') == 0
        or die "gen_model $preset failed";
    if ($name eq 'demo') {
        system("/usr/bin/python3 '$ROOT/tests/fixtures/make_v4_tokenizer.py' "
               . "'$dir' >/dev/null") == 0
            or die "make_v4_tokenizer failed (run scripts/fetch-tokenizer)";
    }
    open my $fh, '>', "$dir/.complete" or die;
    close $fh;
    return $dir;
}

sub new {
    my ($class, %o) = @_;
    my $self = bless {
        dir     => tempdir('dsv4-t-XXXXXX', TMPDIR => 1,
                           CLEANUP => !$ENV{DSV4_T_LEAVE}),
        port    => free_port(),
        http    => '',
        server  => '',
        main    => '',
        workers => 0,        # 0: master_process off (one process)
        log_level => 'info',
        access_log => undef, # a log_format string: log to access.log
        %o,
    }, $class;
    push @INSTANCES, $self;
    return $self;
}

# The usual setup: the demo model (with aliases) and the tiny one, every
# API on its usual path.  %o: http / server (appended), main, workers.
sub standard {
    my ($class, %o) = @_;
    my $demo = model_dir('demo');
    my $tiny = model_dir('tiny');
    my $http = "    dsv4_model demo $demo alias=deepseek-chat:chat"
        . " alias=deepseek-reasoner:thinking;\n"
        . "    dsv4_model tiny $tiny tokenizer=off max_ctx=2048;\n"
        . (delete $o{http} || '');
    my $api = delete $o{api};
    my $server = '';
    for (['/v1/chat/completions', 'chat_completions'],
         ['/v1/completions', 'completions'], ['/v1/messages', 'messages'],
         ['/v1/models', 'models'], ['/tokenize', 'tokenize'],
         ['/detokenize', 'detokenize'], ['/health', 'health'],
         ['/metrics', 'metrics'])
    {
        my $extra = defined $api && $_->[1] !~ /^(health|metrics)$/ ? " $api" : '';
        $server .= "        location = $_->[0] { dsv4_api $_->[1];$extra }\n";
    }
    $server .= delete $o{server} || '';
    return $class->new(http => $http, server => $server, %o);
}

sub port { $_[0]{port} }
sub dir { $_[0]{dir} }

sub module_path {
    return $ENV{DSV4_MODULE} || "$ROOT/build/ngx_dsv4_module.so";
}

# For tests that run nginx on a configuration of their own: main-context
# directives so that a crashing worker leaves a core in $dir, and what that
# core says (every thread's backtrace, when gdb is installed) for a failing
# error-log check.
sub core_directives {
    my ($dir) = @_;
    return " worker_rlimit_core 2g; working_directory $dir/;";
}

sub crash_report {
    my ($dir) = @_;
    my @cores = glob("$dir/core*");
    return '' unless @cores;
    return "a core was left in $cores[0] (no gdb to read it)"
        unless system('command -v gdb >/dev/null 2>&1') == 0;
    my $bin = -x '/usr/sbin/nginx' ? '/usr/sbin/nginx' : 'nginx';
    return scalar `gdb -batch -ex 'thread apply all bt 20' $bin $cores[0] 2>&1 | grep -v '^\\[New LWP'`;
}

sub conf_text {
    my ($self) = @_;
    my $d = $self->{dir};
    my $mod = module_path();
    my $proc = $self->{workers}
        ? "master_process on;\nworker_processes $self->{workers};\n"
          . ($> == 0 ? "user root;\n" : '')
        : "master_process off;\n";
    my $alog = 'access_log off;';
    if (defined $self->{access_log}) {
        (my $f = $self->{access_log}) =~ s/'/\\'/g;
        $alog = "log_format dsv4t '$f';\n    access_log $d/access.log dsv4t;";
    }
    return <<"EOF";
load_module $mod;
daemon off;
${proc}pid $d/nginx.pid;
error_log $d/error.log $self->{log_level};
$self->{main}
events {
    worker_connections 1024;
}

http {
    $alog
    client_body_temp_path $d/body;
    proxy_temp_path $d/proxy;
    fastcgi_temp_path $d/fastcgi;
    uwsgi_temp_path $d/uwsgi;
    scgi_temp_path $d/scgi;

$self->{http}

    server {
        listen 127.0.0.1:$self->{port};

$self->{server}
    }
}
EOF
}

sub write_conf {
    my ($self) = @_;
    open my $fh, '>', "$self->{dir}/nginx.conf" or die "nginx.conf: $!";
    print $fh $self->conf_text;
    close $fh;
}

# `nginx -t`: returns (exit status, output).
sub test_conf {
    my ($self) = @_;
    $self->write_conf;
    my $out = `nginx -t -p $self->{dir}/ -c nginx.conf -e $self->{dir}/error.log 2>&1`;
    return ($? >> 8, $out);
}

sub run {
    my ($self, %o) = @_;
    $self->write_conf;
    my @cmd = ('nginx', '-p', "$self->{dir}/", '-c', 'nginx.conf',
               '-e', "$self->{dir}/error.log");
    if ($ENV{DSV4_T_VALGRIND}) {
        # --fair-sched: valgrind otherwise runs one thread for long
        # stretches, and the worker would see an engine's tokens in bursts
        unshift @cmd, 'valgrind', '-q', '--error-exitcode=99', '--fair-sched=yes',
            split(' ', $ENV{DSV4_T_VALGRIND_OPTS} || '--leak-check=no'),
            "--log-file=$self->{dir}/valgrind.log";
    }
    my $pid = fork();
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        open STDOUT, '>', "$self->{dir}/stdout.log";
        open STDERR, '>', "$self->{dir}/stderr.log";
        exec @cmd or POSIX::_exit(127);
    }
    $self->{pid} = $pid;

    my $deadline = time + ($ENV{DSV4_T_VALGRIND} ? 120 : 30);
    while (time < $deadline) {
        my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$self->{port}",
                                      Proto => 'tcp');
        if ($s) { close $s; last; }
        if (waitpid($pid, WNOHANG) == $pid) {
            delete $self->{pid};
            diag("nginx exited: " . $self->read_file('stderr.log')
                 . $self->read_file('error.log'));
            return 0;
        }
        sleep 0.05;
    }

    return 1 if $o{no_wait};

    while (time < $deadline) {
        my $r = $self->http('GET', '/health');
        return 1 if $o{allow_failed} && $r->{body} =~ /"failed"/;
        if ($r->{status} == 200) {
            return 1 if $self->{workers} < 2;

            # /health answers for one worker: wait for all of them
            my $m = $self->http('GET', '/metrics')->{body};
            my @n = $m =~ /^dsv4:model_loaded\{[^}]*\} (\d+)$/mg;
            return 1 if @n && !grep { $_ < $self->{workers} } @n;
        }
        sleep 0.05;
    }
    diag("model not ready in time: " . $self->read_file('error.log'));
    return 0;
}

# Reloads the configuration (rewritten from the object's current fields):
# SIGHUP to the master, then waits until the new workers run, the old ones
# have exited (so every new connection meets the new configuration) and
# /health answers 200.  Needs workers >= 1.  Returns 1, or 0 on a timeout
# or a configuration the master refused (the old workers keep serving).
sub reload {
    my ($self, %o) = @_;
    die "reload needs master_process on (workers >= 1)\n" unless $self->{workers};
    my $pid = $self->{pid} or return 0;
    $self->write_conf;
    my $log0 = length $self->read_file('error.log');
    my %old = map { $_ => 1 } $self->read_file('error.log') =~ /start worker process (\d+)/g;
    my %gone;
    kill 'HUP', $pid;
    my $deadline = time + ($o{timeout} || 30);
    while (time < $deadline) {
        my $new = substr($self->read_file('error.log'), $log0);
        if ($new =~ /\[emerg\]/) {
            diag("reload refused: " . join("\n", grep { /\[emerg\]/ } split /\n/, $new));
            return 0;
        }
        my @started = $new =~ /start worker process (\d+)/g;
        $gone{$_} = 1 for grep { $old{$_} } $new =~ /worker process (\d+) exited/g;
        if (@started >= $self->{workers} && keys(%gone) >= keys(%old)) {
            while (time < $deadline) {
                return 1 if $self->http('GET', '/health', undef, -timeout => 5)->{status} == 200;
                sleep 0.05;
            }
            last;
        }
        sleep 0.05;
    }
    diag("reload: new workers not ready in time");
    return 0;
}

# Waits until $pred->(text of the file $name) is true; returns the text, or
# undef after $timeout seconds (default 10).
sub wait_file {
    my ($self, $name, $pred, $timeout) = @_;
    my $deadline = time + ($timeout || 10);
    while (1) {
        my $s = $self->read_file($name);
        return $s if $pred->($s);
        return undef if time >= $deadline;
        sleep 0.05;
    }
}

# The access log (access_log option) as a list of hashes, for a format
# written as space-separated name=value fields ("id=$http_x_id st=$status").
sub access_entries {
    my ($self) = @_;
    my @out;
    for (split /\n/, $self->read_file('access.log')) {
        my %e = /(\w+)=(\S*)/g;
        push @out, \%e;
    }
    return @out;
}

# The access-log entries of the requests tagged id=ID (an "id=$http_x_..."
# field) on any of the instances, as { ID => entry }, once every one of
# @ids is logged (nginx may log a request after the client saw the end of
# the response: lingering close), or after $timeout seconds (default 10).
sub logged_ids {
    my ($instances, $ids, $timeout) = @_;
    my $deadline = time + ($timeout || 10);
    my %by;
    while (1) {
        %by = map { (defined $_->{id} ? ($_->{id} => $_) : ()) }
              map { $_->access_entries } @$instances;
        return \%by if !grep { !$by{$_} } @$ids;
        return \%by if time >= $deadline;
        sleep 0.05;
    }
}

# Every file under the temporary directory (for greps).
sub all_files {
    my ($self) = @_;
    my @out;
    my @dirs = ($self->{dir});
    while (my $d = shift @dirs) {
        opendir my $dh, $d or next;
        for (readdir $dh) {
            next if $_ eq '.' || $_ eq '..';
            my $p = "$d/$_";
            if (-l $p) { next }
            elsif (-d $p) { push @dirs, $p }
            elsif (-f $p) { push @out, $p }
        }
        closedir $dh;
    }
    return @out;
}

sub read_file {
    my ($self, $name) = @_;
    open my $fh, '<', "$self->{dir}/$name" or return '';
    local $/;
    my $s = <$fh>;
    close $fh;
    return $s;
}

sub stop {
    my ($self) = @_;
    my $pid = delete $self->{pid} or return;
    kill 'QUIT', $pid;
    my $deadline = time + ($ENV{DSV4_T_VALGRIND} ? 60 : 15);
    while (time < $deadline) {
        return if waitpid($pid, WNOHANG) == $pid;
        sleep 0.05;
    }
    kill 'KILL', $pid;
    waitpid($pid, 0);
}

# Lines of error.log that must never appear.
sub bad_log_lines {
    my ($self, $re) = @_;
    $re ||= qr/\[(alert|crit|emerg)\]|AddressSanitizer|runtime error|LeakSanitizer/;
    return grep { /$re/ } split /\n/, $self->read_file('error.log');
}

sub log_clean {
    my ($self, $name, $re) = @_;
    my @bad = $self->bad_log_lines($re);
    ok(!@bad, $name || 'error.log has no alert, crit or emerg')
        or diag(join("\n", @bad));
}

# Stops nginx and checks the log (and valgrind's, when used).
sub finish {
    my ($self, $re) = @_;
    $self->stop;
    $self->log_clean(undef, $re);
    if ($ENV{DSV4_T_VALGRIND}) {
        my $v = $self->read_file('valgrind.log');
        ok($v !~ /\S/, 'valgrind reports nothing') or diag($v);
    }
}

# ---- HTTP -----------------------------------------------------------------

sub _request_text {
    my ($self, $method, $path, $body, %h) = @_;
    $body = '' unless defined $body;
    my $req = "$method $path HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n";
    $h{'Content-Length'} = length($body)
        if !exists $h{'Content-Length'} && !exists $h{'Transfer-Encoding'}
           && ($method eq 'POST' || length $body);
    for my $k (sort keys %h) {
        next unless defined $h{$k};
        $req .= "$k: $h{$k}\r\n";
    }
    return "$req\r\n$body";
}

sub connect_socket {
    my ($self) = @_;
    return IO::Socket::INET->new(PeerAddr => "127.0.0.1:$self->{port}",
                                 Proto => 'tcp', Timeout => 5);
}

# Sends a request and returns the connected socket (response unread).
sub start {
    my ($self, $method, $path, $body, %h) = @_;
    my $s = $self->connect_socket or die "connect: $!";
    $s->autoflush(1);
    print $s $self->_request_text($method, $path, $body, %h);
    return $s;
}

# Reads from $s until $pred->($buf) is true, EOF, or $timeout seconds.
sub read_until {
    my ($self, $s, $pred, $timeout, $bufref) = @_;
    my $buf = '';
    $bufref ||= \$buf;
    my $sel = IO::Select->new($s);
    my $deadline = time + ($timeout || 30);
    while (!$pred->($$bufref)) {
        my $left = $deadline - time;
        last if $left <= 0;
        last unless $sel->can_read($left);
        my $n = sysread($s, my $chunk, 65536);
        last unless $n;
        $$bufref .= $chunk;
    }
    return $$bufref;
}

sub parse_response {
    my ($raw) = @_;
    my %r = (raw => $raw, status => 0, headers => {}, body => '');
    my ($head, $body) = split /\r\n\r\n/, $raw, 2;
    return \%r unless defined $head;
    my @lines = split /\r\n/, $head;
    my $sl = shift @lines;
    ($r{status}) = $sl =~ m{^HTTP/\d\.\d (\d+)};
    $r{status} ||= 0;
    for (@lines) {
        my ($k, $v) = /^([^:]+):\s*(.*)$/ or next;
        $r{headers}{lc $k} = $v;
    }
    $body = '' unless defined $body;
    if (($r{headers}{'transfer-encoding'} || '') =~ /chunked/i) {
        my $out = '';
        while ($body =~ s/^([0-9a-fA-F]+)[^\r\n]*\r\n//) {
            my $n = hex $1;
            last if $n == 0;
            $out .= substr($body, 0, $n);
            substr($body, 0, $n + 2) = '';
        }
        $body = $out;
    }
    $r{body} = $body;
    if (($r{headers}{'content-type'} || '') =~ m{application/json}) {
        $r{json} = eval { $JSON->decode($body) };
    }
    return \%r;
}

sub http {
    my ($self, $method, $path, $body, %h) = @_;
    my $timeout = delete $h{-timeout} || 60;
    my $s = $self->connect_socket
        or return { status => 0, body => "connect: $!", headers => {} };
    $s->autoflush(1);
    print $s $self->_request_text($method, $path, $body, %h);
    my $raw = $self->read_until($s, sub { 0 }, $timeout);
    close $s;
    return parse_response($raw);
}

sub post_json {
    my ($self, $path, $obj, %h) = @_;
    my $body = ref $obj ? $JSON->encode($obj) : $obj;
    return $self->http('POST', $path, $body,
                       'Content-Type' => 'application/json', %h);
}

# The JSON payloads of an SSE body ("data: ..." events); [DONE] stays a
# string.  With $events, returns [name, payload] pairs (Anthropic style).
sub sse_data {
    my ($body, $events) = @_;
    my @out;
    for my $ev (split /\n\n/, $body) {
        next unless $ev =~ /\S/;
        my ($name) = $ev =~ /^event: (.*)$/m;
        my ($data) = $ev =~ /^data: (.*)$/m;
        next unless defined $data;
        my $v = $data eq '[DONE]' ? '[DONE]' : eval { $JSON->decode($data) };
        $v = { _bad => $data } unless defined $v;
        push @out, $events ? [$name, $v] : $v;
    }
    return @out;
}

# Runs $code->($i) in $n forked children at once ($i = 0 .. $n-1) and
# returns their results (each child's return value, any Perl data that
# JSON::PP can encode), in $i order.  Children leave with POSIX::_exit, so
# no END block (which would stop the servers) runs in them; a child that
# dies returns { error => message }.
sub parallel {
    my ($n, $code) = @_;
    my $dir = tempdir('dsv4-par-XXXXXX', TMPDIR => 1, CLEANUP => 1);
    my @pids;
    for my $i (0 .. $n - 1) {
        my $pid = fork();
        die "fork: $!" unless defined $pid;
        if ($pid == 0) {
            my $res = eval { $code->($i) };
            $res = { error => "$@" } if $@;
            if (open my $fh, '>', "$dir/$i.json.tmp") {
                print $fh $JSON->encode($res);
                close $fh;
                rename "$dir/$i.json.tmp", "$dir/$i.json";
            }
            POSIX::_exit(0);
        }
        push @pids, $pid;
    }
    waitpid($_, 0) for @pids;
    my @out;
    for my $i (0 .. $n - 1) {
        my $r;
        if (open my $fh, '<', "$dir/$i.json") {
            local $/;
            $r = eval { $JSON->decode(<$fh>) };
            close $fh;
        }
        push @out, defined $r ? $r : { error => "child $i returned nothing" };
    }
    return @out;
}

# A metric's value from /metrics text (first matching line).
sub metric {
    my ($self, $name, $labels) = @_;
    my $r = $self->http('GET', '/metrics');
    for (split /\n/, $r->{body}) {
        next if /^#/;
        my ($n, $l, $v) = /^([^\s{]+)(\{[^}]*\})?\s+(\S+)$/ or next;
        next unless $n eq $name;
        next if defined $labels && index($l || '', $labels) < 0;
        return $v + 0;
    }
    return undef;
}

# The sum of a metric over the lines whose labels include %labels (in any
# order); undef when no line matches.
sub metric_sum {
    my ($self, $name, %labels) = @_;
    my $r = $self->http('GET', '/metrics');
    my ($sum, $n) = (0, 0);
    for (split /\n/, $r->{body}) {
        next if /^#/;
        my ($mn, $l, $v) = /^([^\s{]+)(?:\{([^}]*)\})?\s+(\S+)$/ or next;
        next unless $mn eq $name;
        my %have = ($l // '') =~ /(\w+)="((?:[^"\\]|\\.)*)"/g;
        next if grep { !defined $have{$_} || $have{$_} ne $labels{$_} } keys %labels;
        $sum += $v;
        $n++;
    }
    return $n ? $sum : undef;
}

END {
    for my $t (@INSTANCES) {
        $t->stop if $t->{pid};
    }
}

1;
