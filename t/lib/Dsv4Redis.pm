package Dsv4Redis;

# A throwaway redis-server for the cache tests: started on 127.0.0.1 at a
# free high port with no persistence, stopped by pid in an END block (and
# SIGCONT'd first, in case a test left it stopped).
#
#   my $r = Dsv4Redis->new;          # skips the test file without redis-server
#   $r->start or die;  $r->port;  $r->cli('DBSIZE');
#   $r->pause; $r->resume;           # SIGSTOP / SIGCONT
#   $r->stop;                        # SIGTERM, then SIGKILL
#   $r->shutdown;                    # SHUTDOWN NOSAVE (a graceful exit), reaped
#   $r->debug_sleep(2);              # DEBUG SLEEP 2 from a child (returns at once)
#   $r->debug_ok;                    # DEBUG is enabled (redis 7: --enable-debug-command)

use strict;
use warnings;

use File::Temp qw(tempdir);
use IO::Socket::INET;
use POSIX qw(:sys_wait_h);
use Time::HiRes qw(time sleep);

my @SERVERS;

sub available {
    return system('sh', '-c', 'command -v redis-server >/dev/null && command -v redis-cli >/dev/null') == 0;
}

sub new {
    my ($class, %o) = @_;
    my $self = bless { dir => tempdir('dsv4-redis-XXXXXX', TMPDIR => 1, CLEANUP => 1),
                       port => _free_port(), %o }, $class;
    push @SERVERS, $self;
    return $self;
}

sub _free_port {
    # a high port that nothing listens on (nginx's free_port picks from the
    # ephemeral range too; retry on a clash)
    for (1 .. 50) {
        my $p = 20000 + int(rand(30000));
        my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$p", Proto => 'tcp');
        if ($s) { close $s; next; }
        my $l = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $p,
                                      Proto => 'tcp', Listen => 1, ReuseAddr => 1) or next;
        close $l;
        return $p;
    }
    die "no free port";
}

sub port { $_[0]{port} }
sub pid { $_[0]{pid} }

sub start {
    my ($self, @extra) = @_;
    my $pid = fork();
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        open STDOUT, '>>', "$self->{dir}/redis.log";
        open STDERR, '>&', \*STDOUT;
        exec 'redis-server', '--bind', '127.0.0.1', '--port', $self->{port},
            '--save', '', '--appendonly', 'no', '--dir', $self->{dir},
            '--daemonize', 'no', '--enable-debug-command', 'yes', @extra
            or POSIX::_exit(127);
    }
    $self->{pid} = $pid;
    my $deadline = time + 10;
    while (time < $deadline) {
        my $out = $self->cli('PING');
        return 1 if defined $out && $out =~ /PONG/;
        return 0 if waitpid($pid, WNOHANG) == $pid;
        sleep 0.05;
    }
    return 0;
}

sub cli {
    my ($self, @args) = @_;
    my @q = map { my $a = $_; $a =~ s/'/'\\''/g; "'$a'" } @args;
    my $out = `timeout 5 redis-cli -h 127.0.0.1 -p $self->{port} @q 2>&1`;
    return $? == 0 ? $out : undef;
}

sub pause { kill 'STOP', $_[0]{pid} if $_[0]{pid} }
sub resume { kill 'CONT', $_[0]{pid} if $_[0]{pid} }

sub stop {
    my ($self) = @_;
    my $pid = delete $self->{pid} or return;
    kill 'CONT', $pid;
    kill 'TERM', $pid;
    my $deadline = time + 5;
    while (time < $deadline) {
        return if waitpid($pid, WNOHANG) == $pid;
        sleep 0.05;
    }
    kill 'KILL', $pid;
    waitpid($pid, 0);
}

sub shutdown {
    my ($self) = @_;
    my $pid = $self->{pid} or return 0;
    $self->cli('SHUTDOWN', 'NOSAVE');
    my $deadline = time + 5;
    while (time < $deadline) {
        if (waitpid($pid, WNOHANG) == $pid) {
            delete $self->{pid};
            return 1;
        }
        sleep 0.05;
    }
    $self->stop;
    return 0;
}

sub debug_ok {
    my $out = $_[0]->cli('DEBUG', 'HELP');
    return defined $out && $out !~ /^\(?error\)? ?ERR /m;
}

# DEBUG SLEEP from a child process: the server answers nobody for $secs
sub debug_sleep {
    my ($self, $secs) = @_;
    my $pid = fork();
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        open STDOUT, '>', '/dev/null';
        open STDERR, '>&', \*STDOUT;
        exec 'redis-cli', '-h', '127.0.0.1', '-p', $self->{port}, 'DEBUG', 'SLEEP', $secs
            or POSIX::_exit(127);
    }
    return $pid;
}

END {
    $_->stop for grep { $_->{pid} } @SERVERS;
}

1;
