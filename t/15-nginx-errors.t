#!/usr/bin/perl
# Errors nginx itself produces, before or instead of the module, are JSON in
# the API's shape on dsv4's servers (ngx_http_dsv4_errors.c):
#  - a Content-Length over client_max_body_size: 413 in the location's API
#    shape (OpenAI; Anthropic on /v1/messages), naming the limit
#  - a request line or header nginx cannot parse, headers too large, no
#    Host, a URI too long, a path no location serves: 400/414/404 in the
#    shape both SDKs read ({"type": "error", "error": {message, type, code}})
#  - a body that stops arriving: 408 in the API's shape (nginx alone closes
#    the connection without an answer)
#  - left alone: an error_page the operator configured, and servers without
#    dsv4 locations (nginx's HTML page)
#  - the worker goes on serving; HEAD gets the headers only
# t/12-sdk.t drives the same errors through the official SDKs.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Socket::INET;
use Dsv4Nginx;

my $plain = Dsv4Nginx::free_port();
my $t = Dsv4Nginx->standard(
    http => "    client_body_timeout 1s;\n    large_client_header_buffers 4 2k;\n"
          . "    lingering_timeout 200ms;\n"
          . "    server {\n        listen 127.0.0.1:$plain;\n"
          . "        location / { return 404; }\n    }\n",
    server => "        location = /v1/own-page { dsv4_api chat_completions;"
            . " client_max_body_size 10; dsv4_max_body_size 10;"
            . " error_page 413 /own413.txt; }\n"
            . "        location = /own413.txt { return 200 'the operator\\'s page'; }\n");
ok($t->run, 'nginx starts');
my $pid = $t->{pid};

sub raw {
    my ($text, $port) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port || $t->port,
                                  Timeout => 10) or die "connect: $!";
    print $s $text;
    my $buf = '';
    local $SIG{ALRM} = sub { die "timeout\n" };
    alarm(15 * Dsv4Nginx::time_scale());
    eval { while (sysread($s, my $b, 65536)) { $buf .= $b } };
    alarm 0;
    my ($head, $body) = split /\r\n\r\n/, $buf, 2;
    my %h;
    my ($status) = ($head // '') =~ m{^HTTP/1\.1 (\d+)};
    $h{lc $1} = $2 while ($head // '') =~ /^([^:\r\n]+): *([^\r\n]*)/mg;
    my $json = eval { Dsv4Nginx::json()->decode($body // '') };
    return { status => $status // 0, headers => \%h, body => $body // '', json => $json };
}

my $cl = "Content-Type: application/json\r\nConnection: close\r\n";
my $long = 'x' x 3000;
# [name, request, status, shape (openai | anthropic | both), code]
my @cases = (
    ['Content-Length over client_max_body_size',
     "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n${cl}Content-Length: 99999999999\r\n\r\n",
     413, 'openai', 'request_too_large'],
    ['the same on /v1/messages',
     "POST /v1/messages HTTP/1.1\r\nHost: x\r\n${cl}Content-Length: 5000000\r\n\r\n",
     413, 'anthropic', 'request_too_large'],
    ['a chunked body over the limit',
     "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n${cl}Transfer-Encoding: chunked\r\n\r\n"
     . sprintf("%x\r\n", 1_100_000) . ('x' x 1_100_000) . "\r\n0\r\n\r\n",
     413, 'openai', 'request_too_large'],
    ['a malformed request line', "GARBAGE\r\n\r\n", 400, 'both', 'bad_request'],
    ['a URI too long', "GET /v1/$long HTTP/1.1\r\nHost: x\r\n\r\n", 414, 'both', 'uri_too_long'],
    ['a header too large', "GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: $long\r\n\r\n",
     400, 'both', 'bad_request'],
    ['a malformed header', "GET /v1/models HTTP/1.1\r\nHost: x\r\nBad Header\x01: y\r\n\r\n",
     400, 'both', 'bad_request'],
    ['HTTP/1.1 without Host', "GET /v1/models HTTP/1.1\r\n\r\n", 400, 'both', 'bad_request'],
    ['a path no location serves', "GET /v2/nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
     404, 'both', 'not_found'],
    ['a body that stops arriving (client_body_timeout)',
     "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"model\":",
     408, 'openai', 'request_timeout'],
    ['the same on /v1/messages',
     "POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"model\":",
     408, 'anthropic', 'request_timeout'],
);
for my $c (@cases) {
    my ($name, $req, $status, $shape, $code) = @$c;
    my $r = raw($req);
    is($r->{status}, $status, "$name: $status");
    like($r->{headers}{'content-type'} // '', qr{^application/json}, "$name: application/json");
    is($r->{headers}{'content-length'}, length $r->{body}, "$name: Content-Length is the body's");
    my $j = $r->{json};
    ok(ref $j eq 'HASH' && ref $j->{error} eq 'HASH' && length($j->{error}{message} // ''),
       "$name: a JSON error with a message") or diag($r->{body});
    next unless ref $j eq 'HASH' && ref $j->{error} eq 'HASH';
    if ($shape eq 'anthropic') {
        is($j->{type}, 'error', "$name: Anthropic shape");
        is($j->{error}{type}, $code eq 'request_too_large' ? 'request_too_large'
                                                            : 'invalid_request_error',
           "$name: Anthropic error type");
    } else {
        is($j->{error}{code}, $code, "$name: code $code");
        is($j->{error}{type}, 'invalid_request_error', "$name: type invalid_request_error");
        is($j->{type}, $shape eq 'both' ? 'error' : undef, "$name: $shape shape");
    }
}
like(raw("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n${cl}Content-Length: 99999999\r\n\r\n")
     ->{json}{error}{message}, qr/\b1048576 bytes\b/, '413 names the limit');

my $h = raw("HEAD /v2/nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
is($h->{status}, 404, 'HEAD of an unserved path: 404');
is($h->{body}, '', 'HEAD: no body');

my $own = raw("POST /v1/own-page HTTP/1.1\r\nHost: x\r\n${cl}Content-Length: 5000\r\n\r\n");
is($own->{body}, "the operator's page", 'an error_page of the operator is left alone');
my $other = raw("GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", $plain);
is($other->{status}, 404, 'a server without dsv4: 404');
like($other->{headers}{'content-type'} // '', qr{^text/html}, '... nginx\'s own HTML page');
like(raw("GARBAGE\r\n\r\n", $plain)->{headers}{'content-type'} // '', qr{^text/html},
     '... also before a location is known');

my $ok = $t->post_json('/v1/chat/completions',
                       { model => 'demo', messages => [{ role => 'user', content => 'hi' }],
                         max_tokens => 2 });
is($ok->{status}, 200, 'the worker still serves');
is($t->{pid}, $pid, 'same nginx');
cmp_ok($t->metric('dsv4:http_errors_total', 'api="chat_completions",code="413"') // 0, '>=', 2,
       'nginx\'s 413s on a dsv4 location are counted');
$t->log_clean;
done_testing;
