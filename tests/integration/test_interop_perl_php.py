"""Perl Gearman::Client/Worker and PHP GearmanClient/GearmanWorker against gearstore.

The Perl modules (libgearman-client-perl) are a pure-Perl protocol implementation; the
PHP extension (php-gearman) wraps the C libgearman. Each test pairs a client in one
language with a worker in the other and runs a foreground and a background job. Like
the gearman-tools tests, each scenario also runs against the reference gearmand, so a
failure only on gearstore is a gearstore bug. Scripts run with subprocess timeouts.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gearstore.client import admin, parse_status
from tests.fixtures.server import ServerThread
from tests.tools import Gearmand, Spawner, run, tool, wait_for

pytestmark = pytest.mark.needs_tool("perl, php")

PERL_CLIENT = r"""
use strict; use warnings;
use Gearman::Client;
my ($port, $mode, $func, $arg) = @ARGV;
my $client = Gearman::Client->new(job_servers => ["127.0.0.1:$port"]);
if ($mode eq "fg") {
    my $result = $client->do_task($func, $arg, {timeout => 20});
    defined $result or die "do_task failed\n";
    print $$result;
} else {
    my $handle = $client->dispatch_background($func, $arg) or die "no handle\n";
    if ($mode eq "status") {
        my $status = $client->get_status($handle) or die "no status\n";
        print join(" ", $status->known ? 1 : 0, $status->running ? 1 : 0);
    } else {
        print $handle;
    }
}
"""

PERL_WORKER = r"""
use strict; use warnings;
use Gearman::Worker;
my ($port, $jobs, $out) = @ARGV;
my $worker = Gearman::Worker->new(job_servers => ["127.0.0.1:$port"]);
$worker->register_function(reverse => sub { scalar reverse $_[0]->arg });
$worker->register_function(record => sub {
    open my $fh, ">>", $out or die; print $fh $_[0]->arg, "\n"; close $fh; "recorded"
});
my $done = 0;
$worker->work(on_complete => sub { $done++ }, stop_if => sub { $done >= $jobs });
"""

PHP_CLIENT = r"""<?php
[, $port, $mode, $func, $arg] = $argv;
$client = new GearmanClient();
$client->addServer("127.0.0.1", (int)$port);
$client->setTimeout(20000);
$reply = $mode === "fg" ? $client->doNormal($func, $arg) : $client->doBackground($func, $arg);
if ($client->returnCode() !== GEARMAN_SUCCESS) {
    fwrite(STDERR, "gearman error: " . $client->error() . "\n");
    exit(1);
}
if ($mode === "status") {
    [$known, $running] = $client->jobStatus($reply);
    $reply = ($known ? "1" : "0") . " " . ($running ? "1" : "0");
}
echo $reply;
"""

PHP_WORKER = r"""<?php
[, $port, $jobs, $out] = $argv;
$worker = new GearmanWorker();
$worker->addServer("127.0.0.1", (int)$port);
$worker->setTimeout(20000);
$worker->addFunction("reverse", fn ($job) => strrev($job->workload()));
$worker->addFunction("record", function ($job) use ($out) {
    file_put_contents($out, $job->workload() . "\n", FILE_APPEND);
    return "recorded";
});
for ($i = 0; $i < (int)$jobs; $i++) {
    if (!$worker->work()) {
        fwrite(STDERR, "gearman error: " . $worker->error() . "\n");
        exit(1);
    }
}
"""


def _perl() -> str:
    perl = tool("perl", "perl")
    if run([perl, "-MGearman::Client", "-MGearman::Worker", "-e1"], timeout=30).returncode:
        pytest.skip("Perl Gearman modules missing: apt-get install libgearman-client-perl")
    return perl


def _php() -> str:
    php = tool("php", "php-cli")
    if run([php, "-r", "exit(extension_loaded('gearman') ? 0 : 1);"], timeout=30).returncode:
        pytest.skip("PHP gearman extension missing: apt-get install php-gearman")
    return php


@pytest.fixture
def languages(tmp_path: Path) -> dict[str, tuple[list[str], list[str]]]:
    """language -> (client command, worker command), scripts written to tmp_path."""
    scripts = {
        "perl": (_perl(), "pl", PERL_CLIENT, PERL_WORKER),
        "php": (_php(), "php", PHP_CLIENT, PHP_WORKER),
    }
    out: dict[str, tuple[list[str], list[str]]] = {}
    for name, (interpreter, ext, client, worker) in scripts.items():
        (tmp_path / f"client.{ext}").write_text(client)
        (tmp_path / f"worker.{ext}").write_text(worker)
        out[name] = (
            [interpreter, str(tmp_path / f"client.{ext}")],
            [interpreter, str(tmp_path / f"worker.{ext}")],
        )
    return out


@pytest.fixture(params=["gearstore", "gearmand"])
def port(
    request: pytest.FixtureRequest,
    server_factory: Callable[..., ServerThread],
    tmp_path: Path,
) -> int:
    """A server to run the scenario against: gearstore, or the reference gearmand."""
    if request.param == "gearstore":
        return server_factory().port
    reference = Gearmand(tmp_path).start()
    request.addfinalizer(reference.stop)
    return reference.port


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawner]:
    """Start background programs; all are killed when the test ends."""
    spawner = Spawner(tmp_path)
    yield spawner
    spawner.close()


def _client(command: list[str], port: int, *args: str) -> subprocess.CompletedProcess[bytes]:
    done = run([*command, str(port), *args], timeout=40)
    assert done.returncode == 0, done
    return done


@pytest.mark.parametrize("client_lang,worker_lang", [("perl", "php"), ("php", "perl")])
def test_cross_language_jobs(
    languages: dict[str, tuple[list[str], list[str]]],
    client_lang: str,
    worker_lang: str,
    port: int,
    spawn: Spawner,
    tmp_path: Path,
) -> None:
    client, _ = languages[client_lang]
    _, worker_command = languages[worker_lang]
    recorded = tmp_path / "recorded.txt"
    worker = spawn(*worker_command, str(port), "2", str(recorded))

    fg = _client(client, port, "fg", "reverse", f"hello from {client_lang}")
    assert fg.stdout == f"hello from {client_lang}"[::-1].encode()

    bg = _client(client, port, "bg", "record", f"background from {client_lang}")
    assert b"H:" in bg.stdout  # the handle the server gave the background job
    assert worker.wait(40) == 0, worker.output  # two jobs done, then it exits
    assert recorded.read_text() == f"background from {client_lang}\n"
    wait_for(
        lambda: parse_status(admin("127.0.0.1", port, "status")).get("record") == (0, 0, 0),
        "the background job to leave the queue",
    )


@pytest.mark.parametrize("client_lang", ["perl", "php"])
def test_status_of_a_queued_background_job(
    languages: dict[str, tuple[list[str], list[str]]], client_lang: str, port: int
) -> None:
    client, _ = languages[client_lang]
    # submit with no worker, then GET_STATUS on the handle: known, not running
    done = _client(client, port, "status", "nobody-serves-this", "x")
    assert done.stdout == b"1 0"
    assert parse_status(admin("127.0.0.1", port, "status"))["nobody-serves-this"] == (1, 0, 0)
