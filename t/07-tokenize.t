#!/usr/bin/perl
# POST /tokenize and /detokenize (vLLM shapes).

use strict;
use warnings;
use utf8;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Dsv4Nginx;

my $t = Dsv4Nginx->standard;
ok($t->run, 'nginx starts');

my $r = $t->post_json('/tokenize', { model => 'demo', prompt => 'Hello world', add_special_tokens => JSON::PP::false });
is($r->{status}, 200, 'tokenize');
is_deeply($r->{json}{tokens}, [19923, 2058], 'real BPE ids for "Hello world"');
is($r->{json}{count}, 2, 'count');
is($r->{json}{max_model_len}, 4096, 'max_model_len');

$r = $t->post_json('/tokenize', { model => 'demo', prompt => 'Hello world' });
is_deeply($r->{json}{tokens}, [0, 19923, 2058], 'BOS added by default');

$r = $t->post_json('/tokenize', { model => 'demo', prompt => 'Hello, 世界', return_token_strs => JSON::PP::true });
is(scalar @{ $r->{json}{token_strs} }, $r->{json}{count}, 'token_strs');

$r = $t->post_json('/tokenize', { model => 'demo', messages => [{ role => 'user', content => 'Hi' }] });
is($r->{status}, 200, 'tokenize messages');
is($r->{json}{tokens}[0], 0, 'chat prompt starts with BOS');
ok((grep { $_ == 128803 } @{ $r->{json}{tokens} }), 'contains <｜User｜>');

my $text = "Grüße, 世界! 123 \n\t end";
$r = $t->post_json('/tokenize', { model => 'demo', prompt => $text, add_special_tokens => JSON::PP::false });
my $d = $t->post_json('/detokenize', { model => 'demo', tokens => $r->{json}{tokens} });
is($d->{status}, 200, 'detokenize');
is($d->{json}{prompt}, $text, 'round trip');

$d = $t->post_json('/detokenize', { model => 'demo', tokens => [] });
is($d->{json}{prompt}, '', 'empty token list');

$d = $t->post_json('/detokenize', { model => 'demo', tokens => [1, 'x'] });
is($d->{status}, 400, 'non-integer token: 400');
$d = $t->post_json('/detokenize', { model => 'demo', tokens => [129279] });
is($d->{status}, 400, 'id without a token: 400');
$d = $t->post_json('/detokenize', { model => 'demo' });
is($d->{status}, 400, 'missing tokens: 400');
$r = $t->post_json('/tokenize', { model => 'tiny', prompt => 'x' });
is($r->{status}, 400, 'model without tokenizer: 400');
$r = $t->post_json('/tokenize', { model => 'demo', prompt => 5 });
is($r->{status}, 400, 'prompt not a string: 400');

$t->finish;
done_testing;
