#!/usr/bin/perl
# Greedy output through HTTP equals build/dsv4-run's for the same prompt and
# model, with the default CPU kernels and with the scalar reference.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Dsv4Nginx qw(model_dir);

my $run = "$Dsv4Nginx::ROOT/build/dsv4-run";
plan skip_all => 'build/dsv4-run not built' unless -x $run;

my $demo = model_dir('demo');

for my $be (['cpu', 'auto'], ['scalar', 'scalar']) {
    my ($backend, $kernels) = @$be;
    my $t = Dsv4Nginx->standard(http => "    dsv4_backend $backend;\n");
    ok($t->run, "nginx with dsv4_backend $backend");

    my $ids = `$run -m $demo --prompt-ids 0,100,200,300 -n 12 --temperature 0 --kernels $kernels 2>/dev/null`;
    chomp $ids;
    like($ids, qr/^\d+(,\d+){11}$/, "dsv4-run ($kernels) printed 12 ids");
    # ids in the vocabulary's padded tail have no text (and no /detokenize)
    my @known = grep { $t->post_json('/detokenize', { model => 'demo', tokens => [$_] })->{status} == 200 }
                map { $_ + 0 } split /,/, $ids;
    my $want = $t->post_json('/detokenize', { model => 'demo', tokens => \@known })->{json}{prompt};
    my $r = $t->post_json('/v1/completions', { model => 'demo', prompt => [0, 100, 200, 300],
                                               max_tokens => 12, temperature => 0 });
    is($r->{json}{choices}[0]{text}, $want, "$backend: /v1/completions == dsv4-run --prompt-ids");

    my $text = `$run -m $demo --prompt Hello -n 10 --temperature 0 --kernels $kernels 2>/dev/null`;
    chomp $text;
    $r = $t->post_json('/v1/chat/completions', { model => 'demo', max_tokens => 10, temperature => 0,
                                                 messages => [{ role => 'user', content => 'Hello' }] });
    utf8::encode(my $got = $r->{json}{choices}[0]{message}{content});
    is($got, $text, "$backend: /v1/chat/completions == dsv4-run --prompt");
    $t->finish;
}

done_testing;
