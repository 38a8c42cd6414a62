//! Kafka's `ssl.principal.mapping.rules`: how the subject of a client certificate (its
//! distinguished name in RFC 2253 form, `CN=alice,OU=trading,O=Example`) becomes the name
//! of the principal `User:<name>`.
//!
//! The setting is a list of rules, separated by commas or line breaks (and any white space
//! around them), tried in order; the first that applies gives the name:
//!
//! - `DEFAULT`: the distinguished name itself.
//! - `RULE:pattern/replacement/` with an optional `L` or `U` after the last `/` (lower or
//!   upper case the result): applies when `pattern` matches the whole name; the name is then
//!   rewritten as Java's `String.replaceAll(pattern, replacement)` does (`$1` is the first
//!   group; a `$n` beyond the pattern's groups is literal text, as Kafka makes it). A `/` or
//!   `\` inside pattern or replacement is written `\/`, `\\`.
//!
//! A certificate no rule applies to is refused (the connection closes), as Kafka's
//! `NoMatchingRule`. Rules are split and parsed with Kafka's own expressions, so a list
//! Kafka accepts splits the same way here; an invalid list stops the start. Patterns are
//! compiled by the `regex` crate: Java-only constructs (look-around, back-references,
//! possessive quantifiers) are refused at start rather than misread.

use std::fmt;
use std::sync::LazyLock;

use regex::{Captures, Regex};

/// Kafka's `RULE_PATTERN`, as `regex` syntax (`\s` is Java's ASCII class).
const RULE_PATTERN: &str = r"(DEFAULT)|RULE:((?:\\.|[^\\/])*)/((?:\\.|[^\\/])*)/([LU]?).*?|(.*?)";

/// Kafka's `RULE_SPLITTER`: one rule and the separator after it.
static RULE_SPLITTER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r"[\t\n\x0B\x0C\r ]*({RULE_PATTERN})[\t\n\x0B\x0C\r ]*(?:,[\t\n\x0B\x0C\r ]*|$)"
    ))
    .expect("the splitter is a valid expression")
});

/// Kafka's `RULE_PARSER`, anchored at the start (Java's `lookingAt`).
static RULE_PARSER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(r"\A(?:{RULE_PATTERN})")).expect("the parser is a valid expression")
});

/// Rule text beyond this many bytes is refused: the setting is operator input, but a
/// bound keeps a pasted file from compiling into something huge.
pub const RULES_BYTES_MAX: usize = 64 * 1024;
/// Compiled size bound of one pattern (the `regex` crate's own limit, made explicit).
const PATTERN_SIZE_MAX: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    Keep,
    Lower,
    Upper,
}

/// One rule of the list.
#[derive(Clone, Debug)]
enum Rule {
    Default,
    Rewrite {
        /// As written (what `Display` shows, as Kafka's `toString`).
        pattern_text: String,
        /// The pattern, for Java's `replaceAll` (unanchored).
        pattern: Regex,
        /// The pattern anchored at both ends, for Java's `matches`.
        whole: Regex,
        replacement: Vec<Piece>,
        replacement_text: String,
        case: Case,
    },
}

/// A part of a replacement: literal text or a group's text.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Group(usize),
}

/// A parsed `ssl.principal.mapping.rules`.
#[derive(Clone, Debug)]
pub struct PrincipalMapper {
    rules: Vec<Rule>,
}

impl Default for PrincipalMapper {
    /// Kafka's default: `DEFAULT`.
    fn default() -> Self {
        Self {
            rules: vec![Rule::Default],
        }
    }
}

impl PrincipalMapper {
    /// Parses the setting's text; the error names what is wrong (the caller names the setting).
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.len() > RULES_BYTES_MAX {
            return Err(format!(
                "{} bytes of rules, at most {RULES_BYTES_MAX}",
                text.len()
            ));
        }
        let rules = split(text)?
            .iter()
            .map(|rule| parse_rule(rule))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            rules: rules.into_iter().flatten().collect(),
        })
    }

    /// The principal name for a certificate subject, or `None` when no rule applies.
    pub fn name(&self, distinguished_name: &str) -> Option<String> {
        self.rules
            .iter()
            .find_map(|rule| rule.apply(distinguished_name))
    }
}

/// Kafka's `splitRules`: every match of the splitter over the trimmed text, its rule group.
/// Two differences, both refusing what Kafka would quietly misread: a line break separates
/// rules as a comma does (Kafka's splitter skips a rule ended by a bare line break), and
/// text the splitter steps over is an error rather than lost.
fn split(text: &str) -> Result<Vec<String>, String> {
    let normalized = text.replace("\r\n", "\n").replace('\n', ",\n");
    let trimmed = normalized.trim_matches(|character: char| character <= ' ');
    let mut rules = Vec::new();
    let mut covered = 0;
    for captures in RULE_SPLITTER.captures_iter(trimmed) {
        let whole = captures.get(0).expect("group 0 is the match");
        skipped(&trimmed[covered..whole.start()])?;
        covered = whole.end();
        rules.push(captures.get(1).map_or("", |rule| rule.as_str()).to_string());
    }
    skipped(&trimmed[covered..])?;
    Ok(rules)
}

fn skipped(text: &str) -> Result<(), String> {
    if text
        .trim_matches(|character: char| character <= ' ' || character == ',')
        .is_empty()
    {
        Ok(())
    } else {
        Err(format!("invalid rule text: `{text}`"))
    }
}

/// Kafka's `parseRules` for one rule: `None` for an empty one (ignored).
fn parse_rule(rule: &str) -> Result<Option<Rule>, String> {
    let captures = RULE_PARSER
        .captures(rule)
        .ok_or_else(|| format!("invalid rule: {rule}"))?;
    let end = captures.get(0).map_or(0, |whole| whole.end());
    if end != rule.len() {
        return Err(format!(
            "invalid rule `{rule}`, unmatched substring: `{}`",
            &rule[end..]
        ));
    }
    if captures.get(1).is_some() {
        return Ok(Some(Rule::Default));
    }
    let Some(pattern_text) = captures.get(2) else {
        return Ok(None);
    };
    let pattern_text = pattern_text.as_str().to_string();
    let replacement_text = captures.get(3).map_or("", |text| text.as_str()).to_string();
    let case = match captures.get(4).map_or("", |flag| flag.as_str()) {
        "L" => Case::Lower,
        "U" => Case::Upper,
        _ => Case::Keep,
    };
    let compile = |expression: &str| {
        regex::RegexBuilder::new(expression)
            .size_limit(PATTERN_SIZE_MAX)
            .build()
            .map_err(|error| format!("rule `{rule}`: the pattern does not compile: {error}"))
    };
    let pattern = compile(&pattern_text)?;
    let whole = compile(&format!(r"\A(?:{pattern_text})\z"))?;
    let groups = pattern.captures_len() - 1;
    let replacement = parse_replacement(&replacement_text, groups)
        .map_err(|error| format!("rule `{rule}`: replacement: {error}"))?;
    Ok(Some(Rule::Rewrite {
        pattern_text,
        pattern,
        whole,
        replacement,
        replacement_text,
        case,
    }))
}

/// A replacement in Java's `Matcher.appendReplacement` syntax (`\x` is `x`, `$n` is group
/// `n`, as many digits as still name a group), after Kafka's `escapeLiteralBackReferences`
/// (a `$n` beyond the pattern's `groups`, cut to its first digit, is literal text).
fn parse_replacement(text: &str, groups: usize) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut characters = text.chars().peekable();
    while let Some(character) = characters.next() {
        match character {
            '\\' => literal.push(
                characters
                    .next()
                    .ok_or("a `\\` at the end escapes nothing")?,
            ),
            '$' => {
                let Some(first) = characters.peek().and_then(|digit| digit.to_digit(10)) else {
                    return Err(format!(
                        "`$` must be followed by a group number (write `\\$` for a dollar): {text}"
                    ));
                };
                characters.next();
                let mut group = first as usize;
                // Kafka leaves `$0...` to Java; `$n` beyond the groups is literal.
                if groups > 0 && first != 0 && group > groups {
                    literal.push('$');
                    literal.push(char::from_digit(first, 10).unwrap_or('0'));
                    continue;
                }
                while let Some(next) = characters.peek().and_then(|digit| digit.to_digit(10)) {
                    let longer = group * 10 + next as usize;
                    if longer > groups {
                        break;
                    }
                    group = longer;
                    characters.next();
                }
                if group > groups {
                    return Err(format!(
                        "group {group} does not exist (the pattern has {groups})"
                    ));
                }
                if !literal.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut literal)));
                }
                pieces.push(Piece::Group(group));
            }
            other => literal.push(other),
        }
    }
    if !literal.is_empty() {
        pieces.push(Piece::Text(literal));
    }
    Ok(pieces)
}

impl Rule {
    /// Kafka's `Rule.apply`: `None` when the rule does not apply.
    fn apply(&self, name: &str) -> Option<String> {
        let Rule::Rewrite {
            pattern,
            whole,
            replacement,
            case,
            ..
        } = self
        else {
            return Some(name.to_string());
        };
        if !whole.is_match(name) {
            return None;
        }
        let rewritten = pattern
            .replace_all(name, |captures: &Captures<'_>| {
                expand(replacement, captures)
            })
            .into_owned();
        Some(match case {
            Case::Keep => rewritten,
            Case::Lower => rewritten.to_lowercase(),
            Case::Upper => rewritten.to_uppercase(),
        })
    }
}

fn expand(replacement: &[Piece], captures: &Captures<'_>) -> String {
    let mut out = String::new();
    for piece in replacement {
        match piece {
            Piece::Text(text) => out.push_str(text),
            Piece::Group(group) => {
                out.push_str(captures.get(*group).map_or("", |text| text.as_str()));
            }
        }
    }
    out
}

/// Kafka's `Rule.toString`.
impl fmt::Display for Rule {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Default => formatter.write_str("DEFAULT"),
            Rule::Rewrite {
                pattern_text,
                replacement_text,
                case,
                ..
            } => {
                write!(formatter, "RULE:{pattern_text}/{replacement_text}")?;
                match case {
                    Case::Lower => formatter.write_str("/L"),
                    Case::Upper => formatter.write_str("/U"),
                    Case::Keep => Ok(()),
                }
            }
        }
    }
}

/// As Kafka's `SslPrincipalMapper.toString` lists its rules: `[RULE:..., DEFAULT]`.
impl fmt::Display for PrincipalMapper {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("[")?;
        for (index, rule) in self.rules.iter().enumerate() {
            if index > 0 {
                formatter.write_str(", ")?;
            }
            write!(formatter, "{rule}")?;
        }
        formatter.write_str("]")
    }
}

#[cfg(test)]
mod tests;
