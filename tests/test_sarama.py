"""Guards issue 15's first report: Sarama (Go) with its default config speaks Kafka 0.8.2 and
commits offsets with OffsetCommit v1 (a broker that refuses it closes the connection and no
offset is ever committed), and its ClusterAdmin lists topics with DescribeConfigs v0. Sarama
is the one Debian packages (golang-github-shopify-sarama-dev, 1.22), built here in GOPATH mode;
scripts/test.sh installs it. The program is tests/sarama/offset_commit.go.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import helpers

SOURCE = Path(__file__).resolve().parent / "sarama" / "offset_commit.go"
GOPATH = "/usr/share/gocode"

pytestmark = pytest.mark.skipif(
    shutil.which("go") is None or not Path(GOPATH, "src/github.com/Shopify/sarama").is_dir(),
    reason="go or Debian's Sarama (golang-go, golang-github-shopify-sarama-dev) is not installed")


@pytest.fixture(scope="module")
def sarama_program(tmp_path_factory):
    binary = tmp_path_factory.mktemp("sarama") / "offset_commit"
    env = {**os.environ, "GOPATH": GOPATH, "GO111MODULE": "off", "GOFLAGS": "",
           "GOCACHE": os.environ.get("GOCACHE", str(Path.home() / ".cache" / "go-build"))}
    subprocess.run(["go", "build", "-o", str(binary), str(SOURCE)], check=True, env=env,
                   cwd=SOURCE.parent, capture_output=True, timeout=600)
    return binary


def test_sarama_defaults_commit_with_offset_commit_v1_and_list_topics_with_describe_configs_v0(
        broker, sarama_program):
    helpers.create_topic(broker.bootstrap, "payments", 1, config={"retention.ms": "3600000"})
    run = subprocess.run([str(sarama_program), broker.bootstrap, "payments", "sarama-group"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["commit_errors"] is None
    # Nothing committed yet (Sarama's default initial offset, newest, is -1), then the
    # commit read back by a new offset manager, metadata included.
    assert (result["before"], result["after"], result["after_metadata"]) == (-1, 42, "from-sarama")
    # ListTopics keeps the configs DescribeConfigs v0 marks as not default.
    assert result["partitions"] == 1
    assert result["topic_configs"] == {"retention.ms": "3600000"}
