//! The cases of Kafka's `SslPrincipalMapperTest` (valid and invalid lists, the mapping of
//! its example subjects, how lists split), and a property: parsing never panics, and a list
//! of rules written from parts parses back to those parts.

use super::*;
use proptest::prelude::*;

fn listed(rules: &str) -> String {
    PrincipalMapper::parse(rules)
        .unwrap_or_else(|error| panic!("{rules:?}: {error}"))
        .to_string()
}

#[test]
fn kafka_valid_rules_parse() {
    for rules in [
        "DEFAULT",
        "RULE:^CN=(.*?),OU=ServiceUsers.*$/$1/",
        "RULE:^CN=(.*?),OU=ServiceUsers.*$/$1/L, DEFAULT",
        "RULE:^CN=(.*?),OU=(.*?),O=(.*?),L=(.*?),ST=(.*?),C=(.*?)$/$1@$2/",
        "RULE:^.*[Cc][Nn]=([a-zA-Z0-9.]*).*$/$1/L",
        "RULE:^cn=(.?),ou=(.?),dc=(.?),dc=(.?)$/$1@$2/U",
        "RULE:^CN=([^,ADEFLTU,]+)(,.*|$)/$1/",
        "RULE:^CN=([^,DEFAULT,]+)(,.*|$)/$1/",
    ] {
        assert!(PrincipalMapper::parse(rules).is_ok(), "{rules}");
    }
}

#[test]
fn kafka_invalid_rules_are_refused() {
    for rules in [
        "default",
        "DEFAUL",
        "DEFAULT/L",
        "DEFAULT/U",
        "RULE:CN=(.*?),OU=ServiceUsers.*/$1",
        "rule:^CN=(.*?),OU=ServiceUsers.*$/$1/",
        "RULE:^CN=(.*?),OU=ServiceUsers.*$/$1/L/U",
        "RULE:^CN=(.*?),OU=ServiceUsers.*$/L",
        "RULE:^CN=(.*?),OU=ServiceUsers.*$/U",
        "RULE:^CN=(.*?),OU=ServiceUsers.*$/LU",
    ] {
        assert!(PrincipalMapper::parse(rules).is_err(), "{rules}");
    }
}

#[test]
fn ours_refuses_what_it_cannot_run_as_java_would() {
    for (rules, said) in [
        ("RULE:^CN=(?=x)(.*)$/$1/", "does not compile"),
        ("RULE:^CN=(.*)$/$x/", "group number"),
        ("RULE:^CN=.*$/$1/", "group 1 does not exist"),
        // An escaped last `/` leaves the rule unterminated.
        ("RULE:^CN=(.*)$/a\\/", "invalid rule"),
    ] {
        let error = PrincipalMapper::parse(rules).unwrap_err();
        assert!(error.contains(said), "{rules}: {error}");
    }
}

#[test]
fn kafka_example_subjects_map_as_kafka_maps_them() {
    let rules = [
        "RULE:^CN=(.*?),OU=ServiceUsers.*$/$1/L",
        "RULE:^CN=(.*?),OU=(.*?),O=(.*?),L=(.*?),ST=(.*?),C=(.*?)$/$1@$2/L",
        "RULE:^cn=(.*?),ou=(.*?),dc=(.*?),dc=(.*?)$/$1@$2/U",
        "RULE:^.*[Cc][Nn]=([a-zA-Z0-9.]*).*$/$1/U",
        "DEFAULT",
    ]
    .join(", ");
    let mapper = PrincipalMapper::parse(&rules).unwrap();
    for (subject, name) in [
        ("CN=Duke,OU=ServiceUsers,O=Org,C=US", "duke"),
        ("CN=Duke,OU=SME,O=mycp,L=Fulton,ST=MD,C=US", "duke@sme"),
        ("cn=duke,ou=sme,dc=mycp,dc=com", "DUKE@SME"),
        ("cN=duke,OU=JavaSoft,O=Sun Microsystems", "DUKE"),
        (
            "OU=JavaSoft,O=Sun Microsystems,C=US",
            "OU=JavaSoft,O=Sun Microsystems,C=US",
        ),
    ] {
        assert_eq!(mapper.name(subject).as_deref(), Some(name), "{subject}");
    }
}

#[test]
fn kafka_comma_with_white_space() {
    let mapper = PrincipalMapper::parse(r"RULE:^CN=((\\, *|\w)+)(,.*|$)/$1/,DEFAULT").unwrap();
    assert_eq!(
        mapper
            .name(r"CN=Tkac\, Adam,OU=ITZ,DC=geodis,DC=cz")
            .as_deref(),
        Some(r"Tkac\, Adam")
    );
}

#[test]
fn no_rule_that_applies_gives_no_name() {
    let mapper = PrincipalMapper::parse("RULE:^CN=([a-z]+),OU=trading.*$/$1/").unwrap();
    assert_eq!(
        mapper.name("CN=alice,OU=trading,O=X").as_deref(),
        Some("alice")
    );
    assert_eq!(mapper.name("CN=mallory,OU=other"), None);
    assert_eq!(PrincipalMapper::parse("").unwrap().name("CN=x"), None);
    assert_eq!(
        PrincipalMapper::default().name("CN=x").as_deref(),
        Some("CN=x")
    );
}

#[test]
fn kafka_rules_split_as_kafka_splits_them() {
    for (expected, rules) in [
        ("[]", ""),
        ("[DEFAULT]", "DEFAULT"),
        ("[RULE:/]", "RULE://"),
        ("[RULE:/.*]", "RULE:/.*/"),
        ("[RULE:/.*/L]", "RULE:/.*/L"),
        ("[RULE:/, DEFAULT]", "RULE://,DEFAULT"),
        ("[RULE:/, DEFAULT]", "  RULE:// ,  DEFAULT  "),
        (
            "[RULE:   /     , DEFAULT]",
            "  RULE:   /     / ,  DEFAULT  ",
        ),
        (
            "[RULE:  /     /U, DEFAULT]",
            "  RULE:  /     /U   ,DEFAULT  ",
        ),
        (
            "[RULE:([A-Z]*)/$1/U, RULE:([a-z]+)/$1, DEFAULT]",
            "  RULE:([A-Z]*)/$1/U   ,RULE:([a-z]+)/$1/,   DEFAULT  ",
        ),
        ("[]", ",   , , ,      , , ,   "),
        ("[RULE:/, DEFAULT]", ",,RULE://,,,DEFAULT,,"),
        (
            "[RULE: /   , DEFAULT]",
            ",  , RULE: /   /    ,,,   DEFAULT, ,   ",
        ),
        (
            "[RULE:   /  /U, DEFAULT]",
            "     ,  , RULE:   /  /U    ,,  ,DEFAULT, ,",
        ),
        (r"[RULE:\/\\\(\)\n\t/\/\/]", r"RULE:\/\\\(\)\n\t/\/\//"),
        (
            r"[RULE:\**\/+/*/L, RULE:\/*\**/**]",
            r"RULE:\**\/+/*/L,RULE:\/*\**/**/",
        ),
    ] {
        assert_eq!(listed(rules), expected, "{rules:?}");
    }
}

#[test]
fn line_breaks_separate_rules_too() {
    let mapper = PrincipalMapper::parse(
        "RULE:^CN=([a-z]+),OU=trading.*$/$1/\nRULE:^CN=([a-z]+),.*$/$1/U\r\nDEFAULT",
    )
    .unwrap();
    assert_eq!(
        mapper.to_string(),
        "[RULE:^CN=([a-z]+),OU=trading.*$/$1, RULE:^CN=([a-z]+),.*$/$1/U, DEFAULT]"
    );
    assert_eq!(mapper.name("CN=bob,OU=ops").as_deref(), Some("BOB"));
    // Kafka's own multi-line form, a comma ending each line, reads the same.
    let kafka_form =
        PrincipalMapper::parse("RULE:^CN=([a-z]+),OU=trading.*$/$1/,\n  DEFAULT").unwrap();
    assert_eq!(
        kafka_form.to_string(),
        "[RULE:^CN=([a-z]+),OU=trading.*$/$1, DEFAULT]"
    );
}

#[test]
fn replacement_groups_follow_java_and_kafka() {
    // `$12` with one group: group 1 then the text "2"; `$3` beyond the groups is literal.
    let mapper = PrincipalMapper::parse(r"RULE:^CN=(\w+)$/$12-$3-\$1/").unwrap();
    assert_eq!(mapper.name("CN=ann").as_deref(), Some("ann2-$3-$1"));
    assert!(PrincipalMapper::parse(&"x".repeat(RULES_BYTES_MAX + 1)).is_err());
}

/// A rule from parts: pattern from a few DN-ish atoms (some escaped), a replacement of
/// text and groups, a case flag.
fn rule_parts() -> impl Strategy<Value = (String, String, &'static str)> {
    let atom = prop::sample::select(vec![
        "CN=", "OU=", ",", "(.*?)", "([a-z]+)", ".*", r"\/", r"\\", "x", " ",
    ]);
    let piece = prop::sample::select(vec!["$1", "@", "a", r"\/", r"\$", "-"]);
    (
        prop::collection::vec(atom, 1..6).prop_map(|atoms| atoms.concat()),
        prop::collection::vec(piece, 0..4).prop_map(|pieces| pieces.concat()),
        prop::sample::select(vec!["", "L", "U"]),
    )
}

proptest! {
    #[test]
    fn parsing_never_panics(text in "\\PC{0,80}", subject in "[A-Za-z=, ]{0,30}") {
        if let Ok(mapper) = PrincipalMapper::parse(&text) {
            let _ = mapper.name(&subject);
        }
    }

    #[test]
    fn rules_written_from_parts_parse_back_to_them(
        rules in prop::collection::vec(rule_parts(), 1..4),
        with_default in any::<bool>(),
    ) {
        let mut written: Vec<String> = rules
            .iter()
            .map(|(pattern, replacement, case)| format!("RULE:{pattern}/{replacement}/{case}"))
            .collect();
        if with_default {
            written.push("DEFAULT".into());
        }
        let Ok(mapper) = PrincipalMapper::parse(&written.join(",")) else {
            // Only a pattern without a group may refuse `$1`.
            let group_missing = rules.iter().any(|(pattern, replacement, _)| {
                !pattern.contains('(') && replacement.contains("$1")
            });
            prop_assert!(group_missing);
            return Ok(());
        };
        let mut expected: Vec<String> = rules
            .iter()
            .map(|(pattern, replacement, case)| {
                let flag = match *case { "" => String::new(), flag => format!("/{flag}") };
                format!("RULE:{pattern}/{replacement}{flag}")
            })
            .collect();
        if with_default {
            expected.push("DEFAULT".into());
        }
        prop_assert_eq!(mapper.to_string(), format!("[{}]", expected.join(", ")));
    }
}
