"""Guards `ringfeed acl create|list|delete` on the real binary: ACLs the CLI creates are what
confluent-kafka's AdminClient describes and what the broker enforces (alice may produce once
the CLI allows it, and not after the CLI deletes it), ACLs librdkafka creates are what the CLI
lists, and bad flags or a refused request end in a clear message and a non-zero exit.

Here the CLI reaches the broker on a PLAINTEXT listener as User:ANONYMOUS, which these brokers
name a super user (an operator's local admin listener); test_cli_security.py drives it over
SASL and TLS with --command-config."""

from confluent_kafka.admin import (AclBinding, AclBindingFilter, AclOperation, AclPermissionType,
                                   ResourcePatternType, ResourceType)

from conftest import ringfeed_binary  # noqa: F401 (the binary under test)
from test_acls import AUTHORIZER, admin_client, create_topics, produce_outcome
from test_admin_cli import cli, table
from test_security import create_user, listener_ports

TOPIC_AUTHORIZATION_FAILED = 29
ALL = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                       AclOperation.ANY, AclPermissionType.ANY)


class Plain:
    """What `cli` needs of a broker: the PLAINTEXT listener's address."""

    def __init__(self, bootstrap):
        self.bootstrap = bootstrap


def broker_with_acls(start_broker, tmp_path, super_users="User:admin;User:ANONYMOUS"):
    data_dir = tmp_path / "data0"
    for user in ("admin", "alice"):
        create_user(data_dir, user, f"{user}-secret", "SCRAM-SHA-512")
    broker = start_broker(extra_args=[
        "--listeners", "SASL_PLAINTEXT://127.0.0.1:0,PLAINTEXT://127.0.0.1:0",
        "--sasl-enabled-mechanisms", "SCRAM-SHA-512",
        "--authorizer-class-name", AUTHORIZER, "--super-users", super_users])
    ports = listener_ports(broker)
    return f"127.0.0.1:{ports['SASL_PLAINTEXT']}", Plain(f"127.0.0.1:{ports['PLAINTEXT']}")


def run(plain, *args):
    result = cli(plain, "acl", *args)
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def described(admin):
    return sorted((b.restype.name, b.name, b.resource_pattern_type.name, b.principal, b.host,
                   b.operation.name, b.permission_type.name)
                  for b in admin.describe_acls(ALL).result(timeout=15))


def test_acl_cli_create_list_delete_agree_with_librdkafka_and_the_broker(start_broker, tmp_path):
    sasl, plain = broker_with_acls(start_broker, tmp_path)
    admin = admin_client(sasl)
    create_topics(admin, ["orders", "pay-eu"])
    assert produce_outcome(sasl, "alice", "orders") == [TOPIC_AUTHORIZATION_FAILED] * 5

    code, out, err = run(plain, "create", "--allow-principal", "User:alice", "--operation", "Write",
                         "--operation", "Describe", "--topic", "orders")
    assert code == 0, err
    assert out.count("created ALLOW Topic:orders User:alice") == 2
    code, _out, err = run(plain, "create", "--deny-principal", "User:alice", "--operation", "Read",
                          "--topic", "pay-", "--resource-pattern-type", "prefixed", "--host", "10.0.0.1")
    assert code == 0, err
    assert described(admin) == [
        ("TOPIC", "orders", "LITERAL", "User:alice", "*", "DESCRIBE", "ALLOW"),
        ("TOPIC", "orders", "LITERAL", "User:alice", "*", "WRITE", "ALLOW"),
        ("TOPIC", "pay-", "PREFIXED", "User:alice", "10.0.0.1", "READ", "DENY"),
    ]
    assert produce_outcome(sasl, "alice", "orders") == [], "the CLI's ACL is enforced"

    # What librdkafka creates, the CLI lists; `--topic` with MATCH finds the prefixed one.
    group = AclBinding(ResourceType.GROUP, "billing", ResourcePatternType.LITERAL, "User:bob", "*",
                       AclOperation.READ, AclPermissionType.ALLOW)
    for future in admin.create_acls([group]).values():
        future.result(timeout=15)
    code, out, err = run(plain, "list")
    assert code == 0, err
    rows = table(out, "RESOURCE-TYPE")
    assert ["Group", "billing", "LITERAL", "User:bob", "*", "Read", "ALLOW"] in rows
    assert len(rows) == 4
    code, out, _err = run(plain, "list", "--topic", "pay-eu", "--resource-pattern-type", "match")
    assert table(out, "RESOURCE-TYPE") == [["Topic", "pay-", "PREFIXED", "User:alice", "10.0.0.1", "Read", "DENY"]]
    code, out, _err = run(plain, "list", "--principal", "User:bob")
    assert [row[1] for row in table(out, "RESOURCE-TYPE")] == ["billing"]

    # Delete alice's WRITE only, then everything on the group.
    code, out, err = run(plain, "delete", "--topic", "orders", "--allow-principal", "User:alice",
                         "--operation", "Write")
    assert code == 0, err
    assert out.strip() == "deleted ALLOW Topic:orders User:alice LITERAL Write from *"
    assert produce_outcome(sasl, "alice", "orders") == [TOPIC_AUTHORIZATION_FAILED] * 5
    code, out, err = run(plain, "delete", "--group", "billing")
    assert code == 0 and "deleted ALLOW Group:billing User:bob" in out, err
    assert [row[1] for row in described(admin)] == ["orders", "pay-"]
    code, out, _err = run(plain, "delete", "--group", "billing")
    assert code == 0 and "no ACL matched" in out


def test_acl_cli_refusals_are_clear(start_broker, tmp_path):
    # ANONYMOUS is not a super user here: the broker refuses, the CLI says why.
    _sasl, plain = broker_with_acls(start_broker, tmp_path, super_users="User:admin")
    code, _out, err = run(plain, "create", "--allow-principal", "User:alice", "--operation", "Read",
                          "--topic", "t")
    assert code != 0 and "ClusterAuthorizationFailed (31)" in err, err
    code, _out, err = run(plain, "list")
    assert code != 0 and "ClusterAuthorizationFailed" in err, err
    # Flags the CLI refuses before sending anything.
    for args, reason in [
        (["create", "--operation", "Read", "--topic", "t"], "--allow-principal"),
        (["create", "--allow-principal", "User:a", "--topic", "t"], "--operation"),
        (["create", "--allow-principal", "User:a", "--operation", "Read"], "needs a resource"),
        (["create", "--allow-principal", "User:a", "--operation", "Fly", "--topic", "t"], "unknown operation"),
        (["create", "--allow-principal", "User:a", "--operation", "Read", "--topic", "t",
          "--resource-pattern-type", "match"], "literal or prefixed"),
        (["delete", "--operation", "Read"], "needs a resource"),
    ]:
        code, _out, err = run(plain, *args)
        assert code != 0 and reason in err, (args, err)
    # A principal Kafka refuses: INVALID_REQUEST per binding, exit non-zero.
    _sasl, plain = broker_with_acls(start_broker, tmp_path / "second")
    code, _out, err = run(plain, "create", "--allow-principal", "alice", "--operation", "Read", "--topic", "t")
    assert code != 0 and "not created" in err and "InvalidRequest" in err, err
