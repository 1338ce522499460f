#!/usr/bin/perl
# The official client libraries, unmodified: the `openai` and
# `@anthropic-ai/sdk` npm packages (t/sdk/clients.mjs) against the module.
# Needs them in .cache/node-sdk (DSV4_T_NODE_MODULES):
#     npm install --prefix .cache/node-sdk openai@4.104.0 @anthropic-ai/sdk@0.52.0

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Dsv4Nginx;

my $mods = $ENV{DSV4_T_NODE_MODULES} || "$Dsv4Nginx::ROOT/.cache/node-sdk/node_modules";
plan skip_all => "no node" unless `node --version 2>/dev/null` =~ /^v(\d+)/ && $1 >= 18;
plan skip_all => "openai / \@anthropic-ai/sdk not installed in $mods"
    unless -d "$mods/openai" && -d "$mods/\@anthropic-ai/sdk";

my $t = Dsv4Nginx->standard;
ok($t->run, 'nginx starts');

my $port = $t->port;
my @out = `timeout @{[120 * Dsv4Nginx::time_scale()]} node $FindBin::Bin/sdk/clients.mjs $port $mods 2>&1`;
my $n = 0;
for (@out) {
    chomp;
    if (/^(not )?ok - (.*)$/) {
        ok(!$1, $2);
        $n++;
    } else {
        diag($_);
    }
}
cmp_ok($n, '>=', 25, 'every client check ran');

$t->finish;
done_testing;
