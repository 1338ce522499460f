#!/usr/bin/perl
# dsv4_thread_pool: request parsing, chat encoding and tokenization run in
# an nginx thread pool instead of the event loop; results are the same.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Dsv4Nginx qw(sse_data);

my $t = Dsv4Nginx->standard(main => "thread_pool dsv4 threads=2 max_queue=16;",
                            http => "    dsv4_thread_pool dsv4;\n",
                            server => "        location = /inline { dsv4_api chat_completions;"
                                    . " dsv4_thread_pool off; }\n");
ok($t->run, 'nginx with a thread pool');

my $req = { model => 'demo', max_tokens => 6, temperature => 0,
            messages => [{ role => 'user', content => 'Hello ' x 200 }] };
my $a = $t->post_json('/v1/chat/completions', $req);
my $b = $t->post_json('/inline', $req);
is($a->{status}, 200, 'through the thread pool');
is_deeply($a->{json}{choices}, $b->{json}{choices}, 'same completion as inline');
is($a->{json}{usage}{prompt_tokens}, $b->{json}{usage}{prompt_tokens}, 'same prompt');

my $s = $t->post_json('/v1/chat/completions', { %$req, stream => JSON::PP::true });
my @ev = sse_data($s->{body});
is($ev[-1], '[DONE]', 'streaming through the thread pool');

my $e = $t->post_json('/v1/chat/completions', { model => 'nope', messages => [] });
is($e->{status}, 404, 'errors through the thread pool');
my $k = $t->post_json('/tokenize', { model => 'demo', prompt => 'Hello world' });
is($k->{json}{count}, 3, '/tokenize through the thread pool');

# a client that leaves while its request is in the pool
for (1 .. 5) {
    my $c = $t->start('POST', '/v1/chat/completions', Dsv4Nginx::json()->encode($req),
                      'Content-Type' => 'application/json');
    close $c;
}
select(undef, undef, undef, 0.5);
my $f = $t->post_json('/v1/chat/completions', $req, -timeout => 60 * Dsv4Nginx::time_scale());
is($f->{status}, 200, 'fine after early disconnects') or diag($f->{body});

$t->finish;
done_testing;
