#!/usr/bin/perl
# Directives: the module loads into the stock nginx, every directive parses,
# and bad values are refused by `nginx -t` with a message naming them.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Dsv4Nginx qw(model_dir);

my $tiny = model_dir('tiny');

my $ok = Dsv4Nginx->new(
    http => "dsv4_model tiny $tiny tokenizer=off alias=a1 alias=a2:thinking"
          . " alias=a3:chat max_ctx=512 max_tokens=16 thinking=on"
          . " temperature=0.7 top_p=0.9 top_k=40 min_p=0.05;\n"
          . "dsv4_engine_threads 2; dsv4_max_seqs 8; dsv4_max_batch_tokens 64;\n"
          . "dsv4_prefill_chunk 32; dsv4_max_queue 4;\n"
          . "dsv4_max_body_size 2m; dsv4_max_tokens 100; dsv4_max_n 4;\n"
          . "dsv4_max_prompt_tokens 300; dsv4_timeout 30s; dsv4_retry_after 5;\n"
          . "dsv4_model tiny2 $tiny tokenizer=off cache=off;\n"
          . "dsv4_cache on; dsv4_cache_redis 127.0.0.1:6390; dsv4_cache_key_prefix kv:;\n"
          . "dsv4_cache_redis_timeout 50ms; dsv4_cache_ttl 1h; dsv4_cache_max_value 8m;\n"
          . "dsv4_cache_memory 16m; dsv4_cache_disk kv max=64m; dsv4_cache_block 128;\n"
          . "dsv4_cache_write memory redis; dsv4_cache_scope key;\n",
    server => "location /c { dsv4_api chat_completions; dsv4_max_n 2; }\n"
            . "location /m { dsv4_api models; }\n"
            . "location /h { dsv4_api health; }\n");
my ($rc, $out) = $ok->test_conf;
is($rc, 0, 'every directive parses') or diag($out);

my @bad = (
    [ "dsv4_model x $tiny bogus=1;", qr/invalid parameter "bogus=1"/ ],
    [ "dsv4_model x /nonexistent/dir;", qr/model directory "\/nonexistent\/dir"/ ],
    [ "dsv4_model x $tiny; dsv4_model x $tiny;", qr/duplicate model name "x"/ ],
    [ "dsv4_model x $tiny alias=x;", qr/duplicate model name "x"/ ],
    [ "dsv4_model x $tiny alias=y:fast;", qr/invalid alias mode "fast"/ ],
    [ "dsv4_model x $tiny temperature=hot;", qr/invalid value "temperature=hot"/ ],
    [ "dsv4_model x $tiny temperature=1000;", qr/invalid value "temperature=1000"/ ],
    [ "dsv4_model x $tiny top_p=0;", qr/invalid value "top_p=0"/ ],
    [ "dsv4_model x $tiny max_ctx=1;", qr/invalid value "max_ctx=1", expected an integer in \[2, 2147483647\]/ ],
    [ "dsv4_model x $tiny max_tokens=0;", qr/invalid value "max_tokens=0", expected an integer/ ],
    [ "dsv4_model x $tiny max_ctx=0x10;", qr/invalid value "max_ctx=0x10"/ ],
    [ "dsv4_model x $tiny top_k=-1;", qr/invalid value "top_k=-1", expected an integer in \[0, / ],
    [ "dsv4_model x $tiny min_p=2;", qr/invalid value "min_p=2", expected a number in \[0.00, 1.00\]/ ],
    [ "dsv4_model 'a\"b' $tiny;", qr/invalid model name/ ],
    [ "dsv4_engine_threads 0;", qr/invalid value "0", expected an integer from 1 to 64/ ],
    [ "dsv4_engine_threads many;", qr/invalid value "many"/ ],
    [ "dsv4_max_seqs 32; dsv4_max_batch_tokens 16;",
      qr/"dsv4_max_batch_tokens" 16 is less than "dsv4_max_seqs" 32/ ],
    [ "dsv4_max_body_size lots;", qr/invalid value "lots"/ ],
    [ "dsv4_max_n 1000;", qr/invalid value "1000", expected an integer from 1 to 128/ ],
    [ "dsv4_timeout forever;", qr/invalid value "forever"/ ],
    [ "dsv4_cache maybe;", qr/invalid value "maybe"/ ],
    [ "dsv4_cache_redis localhost:6379;", qr/invalid Redis address "localhost:6379": expected an IP literal/ ],
    [ "dsv4_cache_redis 127.0.0.1:99999;", qr/invalid Redis address "127.0.0.1:99999"/ ],
    [ "dsv4_cache_redis unix:;", qr/invalid Redis address "unix:"/ ],
    [ "dsv4_cache_block 30;", qr/"dsv4_cache_block" 30 is not a multiple of 4/ ],
    [ "dsv4_cache_block 0;", qr/invalid value "0", expected an integer from 4/ ],
    [ "dsv4_cache_memory lots;", qr/invalid value "lots"/ ],
    [ "dsv4_cache_disk /tmp/x max=big;", qr/invalid max size "max=big"/ ],
    [ "dsv4_cache_disk /tmp/x size=1m;", qr/invalid parameter "size=1m"/ ],
    [ "dsv4_cache_write everywhere;", qr/invalid value "everywhere"/ ],
    [ "dsv4_cache_write off redis;", qr/"dsv4_cache_write off" cannot be combined/ ],
    [ "dsv4_cache_scope tenant;", qr/invalid value "tenant"/ ],
    [ "dsv4_model x $tiny cache=maybe;", qr/invalid parameter "cache=maybe"/ ],
);

for my $b (@bad) {
    my $t = Dsv4Nginx->new(http => $b->[0],
                           server => "location / { dsv4_api models; }");
    my ($rc, $out) = $t->test_conf;
    isnt($rc, 0, "refused: $b->[0]");
    like($out, $b->[1], "message names the value: $b->[0]");
}

my $t = Dsv4Nginx->new(server => "location / { dsv4_api embeddings; }");
($rc, $out) = $t->test_conf;
like($out, qr/invalid value "embeddings"/, 'unknown API refused');

$t = Dsv4Nginx->new(server => "location / { dsv4_api models; dsv4_api health; }");
($rc, $out) = $t->test_conf;
like($out, qr/"dsv4_api" directive is duplicate/, 'one API per location');

$t = Dsv4Nginx->new(server => "dsv4_api models;");
($rc, $out) = $t->test_conf;
like($out, qr/"dsv4_api" directive is not allowed here/, 'dsv4_api is location-only');

$t = Dsv4Nginx->new(server => "location / { dsv4_model x $tiny; }");
($rc, $out) = $t->test_conf;
like($out, qr/"dsv4_model" directive is not allowed here/, 'dsv4_model is http-only');

done_testing;
