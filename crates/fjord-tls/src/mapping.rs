//! Principal names from client-certificate subjects: Kafka's `ssl.principal.mapping.rules`.
//!
//! The rules are a comma-separated list, tried in order; the first that applies names the
//! principal:
//! - `RULE:pattern/replacement/` (optionally followed by `L` or `U` to lower- or upper-case the
//!   result): applies when `pattern` matches the whole distinguished name; the name becomes
//!   `replacement`, where `$1`, `$2`, … are the pattern's groups. A `/` inside the pattern or the
//!   replacement is written `\/`. Commas inside a rule do not end it.
//! - `DEFAULT`: the distinguished name itself (RFC 4514, e.g. `CN=writer,O=Example`).
//!
//! No rule applying (or one giving an empty name) is an error: the connection is refused, as
//! Kafka does, rather than given a principal nobody meant.

use regex::Regex;

/// A parsed list of mapping rules.
#[derive(Debug, Clone)]
pub struct PrincipalMapper {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
enum Rule {
    Default,
    Pattern {
        regex: Regex,
        replacement: String,
        case: Case,
    },
}

#[derive(Debug, Clone, Copy)]
enum Case {
    Keep,
    Lower,
    Upper,
}

/// Rules that do not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MappingError {
    /// The text at `at` is neither `DEFAULT` nor `RULE:...`.
    #[error(
        "ssl principal mapping rules: expected DEFAULT or RULE:pattern/replacement/ at {at:?}"
    )]
    Syntax {
        /// The rest of the rules from the error on.
        at: String,
    },
    /// A rule's pattern is not a valid regular expression.
    #[error("ssl principal mapping rules: pattern {pattern:?}: {reason}")]
    Pattern {
        /// The pattern.
        pattern: String,
        /// The regex engine's complaint.
        reason: String,
    },
}

impl Default for PrincipalMapper {
    /// `DEFAULT`: the distinguished name as it is.
    fn default() -> Self {
        PrincipalMapper {
            rules: vec![Rule::Default],
        }
    }
}

impl PrincipalMapper {
    /// Parses Kafka's rule syntax. An empty string means `DEFAULT`.
    pub fn parse(rules: &str) -> Result<PrincipalMapper, MappingError> {
        let mut out = Vec::new();
        let mut rest = rules.trim_start();
        while !rest.is_empty() {
            let syntax = |at: &str| MappingError::Syntax { at: at.to_string() };
            let after = if let Some(after) = rest.strip_prefix("DEFAULT") {
                out.push(Rule::Default);
                after
            } else if let Some(body) = rest.strip_prefix("RULE:") {
                let (pattern, body) = until_slash(body).ok_or_else(|| syntax(rest))?;
                let (replacement, body) = until_slash(body).ok_or_else(|| syntax(rest))?;
                let (case, body) = match body.chars().next() {
                    Some('L') => (Case::Lower, &body[1..]),
                    Some('U') => (Case::Upper, &body[1..]),
                    _ => (Case::Keep, body),
                };
                let regex =
                    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| MappingError::Pattern {
                        pattern: pattern.clone(),
                        reason: e.to_string(),
                    })?;
                out.push(Rule::Pattern {
                    regex,
                    replacement: rust_replacement(&replacement),
                    case,
                });
                body
            } else {
                return Err(syntax(rest));
            };
            let after = after.trim_start();
            rest = match after.strip_prefix(',') {
                Some(next) => next.trim_start(),
                None if after.is_empty() => after,
                None => return Err(syntax(after)),
            };
        }
        if out.is_empty() {
            out.push(Rule::Default);
        }
        Ok(PrincipalMapper { rules: out })
    }

    /// The principal name for distinguished name `dn`, or `None` when no rule applies.
    pub fn map(&self, dn: &str) -> Option<String> {
        for rule in &self.rules {
            let name = match rule {
                Rule::Default => dn.to_string(),
                Rule::Pattern {
                    regex,
                    replacement,
                    case,
                } => {
                    if !regex.is_match(dn) {
                        continue;
                    }
                    let name = regex.replace(dn, replacement.as_str()).into_owned();
                    match case {
                        Case::Keep => name,
                        Case::Lower => name.to_lowercase(),
                        Case::Upper => name.to_uppercase(),
                    }
                }
            };
            if !name.is_empty() {
                return Some(name);
            }
        }
        None
    }
}

/// Splits `s` at its first `/` not escaped as `\/`, unescaping; `None` without one.
fn until_slash(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' if s[i + 1..].starts_with('/') => {
                out.push('/');
                chars.next();
            }
            '/' => return Some((out, &s[i + 1..])),
            c => out.push(c),
        }
    }
    None
}

/// Java's `$1abc` is the regex crate's `${1}abc` (it would read a group named `1abc`).
fn rust_replacement(java: &str) -> String {
    let mut out = String::with_capacity(java.len() + 4);
    let mut chars = java.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '$' if chars.peek().is_some_and(char::is_ascii_digit) => {
                out.push_str("${");
                while let Some(d) = chars.next_if(char::is_ascii_digit) {
                    out.push(d);
                }
                out.push('}');
            }
            '$' => out.push_str("$$"),
            '\\' => {
                if let Some(next) = chars.next() {
                    if next == '$' {
                        out.push_str("$$");
                    } else {
                        out.push(next);
                    }
                }
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(rules: &str, dn: &str) -> Option<String> {
        PrincipalMapper::parse(rules).unwrap().map(dn)
    }

    #[test]
    fn default_is_the_distinguished_name() {
        assert_eq!(map("", "CN=a,O=b").as_deref(), Some("CN=a,O=b"));
        assert_eq!(map("DEFAULT", "CN=a,O=b").as_deref(), Some("CN=a,O=b"));
    }

    #[test]
    fn rules_apply_in_order_with_groups_and_case() {
        let rules =
            "RULE:^CN=(.*?),OU=ServiceUsers.*$/$1/L, RULE:^CN=(.*?),O=(.*)$/$1@$2/, DEFAULT";
        assert_eq!(
            map(rules, "CN=Writer,OU=ServiceUsers,O=Example").as_deref(),
            Some("writer")
        );
        assert_eq!(
            map(rules, "CN=reader,O=Example").as_deref(),
            Some("reader@Example")
        );
        assert_eq!(map(rules, "O=Example").as_deref(), Some("O=Example"));
        assert_eq!(map("RULE:^CN=(.*)$/$1/U", "CN=ab").as_deref(), Some("AB"));
        assert_eq!(map("RULE:^CN=(.*)$/$1x/", "CN=ab").as_deref(), Some("abx"));
    }

    #[test]
    fn a_pattern_must_match_the_whole_name() {
        assert_eq!(map("RULE:CN=a/x/", "CN=a,O=b"), None, "no rule applies");
        assert_eq!(map("RULE:CN=a.*/x/", "CN=a,O=b").as_deref(), Some("x"));
    }

    #[test]
    fn escaped_slashes_and_commas_stay_inside_a_rule() {
        let rules = r"RULE:^CN=(.*)\/(.*),O=x$/$1\/$2/";
        assert_eq!(map(rules, "CN=a/b,O=x").as_deref(), Some("a/b"));
    }

    #[test]
    fn bad_rules_are_refused_with_where() {
        assert!(matches!(
            PrincipalMapper::parse("RULE:^CN=(.*$/$1/"),
            Err(MappingError::Pattern { .. })
        ));
        assert!(matches!(
            PrincipalMapper::parse("RULE:^CN=a"),
            Err(MappingError::Syntax { .. })
        ));
        assert!(matches!(
            PrincipalMapper::parse("DEFAULT junk"),
            Err(MappingError::Syntax { .. })
        ));
        assert!(matches!(
            PrincipalMapper::parse("NOPE"),
            Err(MappingError::Syntax { .. })
        ));
    }
}
