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
    my $server = '';
    for (['/v1/chat/completions', 'chat_completions'],
         ['/v1/completions', 'completions'], ['/v1/messages', 'messages'],
         ['/v1/models', 'models'], ['/tokenize', 'tokenize'],
         ['/detokenize', 'detokenize'], ['/health', 'health'],
         ['/metrics', 'metrics'])
    {
        $server .= "        location = $_->[0] { dsv4_api $_->[1]; }\n";
    }
    $server .= delete $o{server} || '';
    return $class->new(http => $http, server => $server, %o);
}

sub port { $_[0]{port} }
sub dir { $_[0]{dir} }

sub module_path {
    return $ENV{DSV4_MODULE} || "$ROOT/build/ngx_dsv4_module.so";
}

sub conf_text {
    my ($self) = @_;
    my $d = $self->{dir};
    my $mod = module_path();
    my $proc = $self->{workers}
        ? "master_process on;\nworker_processes $self->{workers};\n"
          . ($> == 0 ? "user root;\n" : '')
        : "master_process off;\n";
    return <<"EOF";
load_module $mod;
daemon off;
${proc}pid $d/nginx.pid;
error_log $d/error.log info;
$self->{main}
events {
    worker_connections 1024;
}

http {
    access_log off;
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

END {
    for my $t (@INSTANCES) {
        $t->stop if $t->{pid};
    }
}

1;
