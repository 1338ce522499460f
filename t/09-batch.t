#!/usr/bin/perl
# 16 concurrent streaming clients: every one completes, each greedy output
# equals the same request run alone (a sequence's tokens do not depend on
# what else is in the batch), and the requests ran together (the running
# gauge saw several at once on one engine thread).

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Select;
use Time::HiRes qw(time sleep);
use Dsv4Nginx qw(sse_data);

my $N = 16;
my $t = Dsv4Nginx->standard(http => "    dsv4_max_seqs 16;\n    dsv4_engine_threads 1;\n");
ok($t->run, 'nginx starts');
my $S = Dsv4Nginx::time_scale();      # 1, except under valgrind
my $json = Dsv4Nginx::json();

# every fourth request is constrained (a forced tool call, sampled): the
# output grammar's mask must not make a sequence depend on the batch either
my $tools = [{ type => 'function', function => { name => 'lookup', parameters => {
    type => 'object', properties => { q => { type => 'string' }, n => { type => 'integer' } },
    required => ['q', 'n'] } } }];

sub body {
    my ($i) = @_;
    my %req = (model => 'demo', max_tokens => 12, temperature => 0, stream => JSON::PP::true,
               messages => [{ role => 'user', content => "Request number $i: tell me about " . ('x' x $i) }]);
    %req = (%req, max_tokens => 200, temperature => 0.9, seed => $i, tools => $tools, tool_choice => 'required')
        if $i % 4 == 0;
    return $json->encode(\%req);
}

sub text_of {
    my ($raw) = @_;
    my $r = Dsv4Nginx::parse_response($raw);
    my @ev = sse_data($r->{body});
    return undef unless @ev && $ev[-1] eq '[DONE]';
    return join '', map {
        my $d = ref $_ ? $_->{choices}[0]{delta} : undef;
        $d ? ($d->{content} // '') . join('', map { ($_->{function}{name} // '') . '(' . ($_->{function}{arguments} // '') . ')' }
                                                  @{ $d->{tool_calls} // [] })
           : ''
    } @ev;
}

# alone, one after the other
my @alone;
for my $i (1 .. $N) {
    my $s = $t->start('POST', '/v1/chat/completions', body($i), 'Content-Type' => 'application/json');
    push @alone, text_of($t->read_until($s, sub { $_[0] =~ /\[DONE\]/ }, 30 * $S));
    close $s;
}
is(scalar(grep { defined } @alone), $N, "$N requests alone complete");
is(scalar(grep { my $a = ($alone[$_ - 1] // '') =~ /^lookup\((.*)\)$/ ? eval { $json->decode($1) } : undef;
                 ref $a eq 'HASH' && keys %$a == 2 && defined $a->{q} && !ref $a->{q} && ($a->{n} // '') =~ /^-?\d+$/ }
          grep { $_ % 4 == 0 } 1 .. $N), $N / 4,
   'the constrained requests stream one typed tool call each');

# all at once; the engine's step counters tell how many sequences shared a step
my $steps0 = $t->metric('dsv4:engine_steps_total', 'demo') // 0;
my $seqs0 = $t->metric('dsv4:engine_step_sequences_total', 'demo') // 0;
my (%buf, %sock);
for my $i (1 .. $N) {
    $sock{$i} = $t->start('POST', '/v1/chat/completions', body($i), 'Content-Type' => 'application/json');
    $buf{$i} = '';
}
my $sel = IO::Select->new(values %sock);
my %by_fd = map { fileno($sock{$_}) => $_ } keys %sock;
my $max_running = 0;
my $deadline = time + 60 * $S;
my $last_poll = 0;
while ($sel->count && time < $deadline) {
    if (time - $last_poll > 0.02) {
        my $run = $t->metric('dsv4:num_requests_running', 'demo') // 0;
        $max_running = $run if $run > $max_running;
        $last_poll = time;
    }
    for my $s ($sel->can_read(0.05)) {
        my $i = $by_fd{ fileno $s };
        my $n = sysread($s, my $chunk, 65536);
        if (!$n) { $sel->remove($s); close $s; next; }
        $buf{$i} .= $chunk;
    }
}

my $done = grep { defined text_of($buf{$_}) } 1 .. $N;
is($done, $N, "$N concurrent streams all complete with [DONE]");
my $same = grep { (text_of($buf{$_}) // "\0") eq ($alone[$_ - 1] // "\1") } 1 .. $N;
is($same, $N, 'each concurrent output equals the same request alone');
cmp_ok($max_running, '>', 1, "requests were batched together (saw $max_running running at once)");
my $steps = ($t->metric('dsv4:engine_steps_total', 'demo') // 0) - $steps0;
my $seqs = ($t->metric('dsv4:engine_step_sequences_total', 'demo') // 0) - $seqs0;
cmp_ok($steps, '>', 0, "engine steps counted ($steps)");
cmp_ok($seqs / ($steps || 1), '>', 1.5,
       sprintf('mean sequences per step %.2f: streams shared the weight passes', $seqs / ($steps || 1)));

$t->finish;
done_testing;
