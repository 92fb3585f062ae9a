//! Topic and key templates (`visiond/{pipeline}/results`): text with `{name}` placeholders,
//! filled in once per sink when the pipeline starts. Checked here, without connecting, so that
//! `visiond check` finds a typo before a broker does.

/// The placeholders a template may use, and what they stand for.
pub const PLACEHOLDERS: [(&str, &str); 2] = [
    ("pipeline", "the pipeline's name"),
    (
        "daemon",
        "the daemon's name (`name` in the daemon file, else the host name)",
    ),
];

/// What fills the placeholders of one sink's templates.
#[derive(Debug, Clone, Copy)]
pub struct TemplateValues<'a> {
    pub pipeline: &'a str,
    pub daemon: &'a str,
}

/// A template split into its parts; `parse` has checked every placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Pipeline,
    Daemon,
}

impl Template {
    /// Reads `text`; the error says what is wrong in words (an unknown or unclosed
    /// placeholder, a stray brace).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(at) = rest.find(['{', '}']) {
            literal.push_str(&rest[..at]);
            if rest[at..].starts_with('}') {
                return Err(format!(
                    "'{}' has a '}}' without its '{{'; placeholders are {}",
                    super::limits::shown(text),
                    names()
                ));
            }
            let after = &rest[at + 1..];
            let Some(end) = after.find('}') else {
                return Err(format!(
                    "'{}' opens a placeholder that is never closed; placeholders are {}",
                    super::limits::shown(text),
                    names()
                ));
            };
            let part = match &after[..end] {
                "pipeline" => Part::Pipeline,
                "daemon" => Part::Daemon,
                other => {
                    return Err(format!(
                        "'{{{}}}' is not a placeholder; placeholders are {}",
                        super::limits::shown(other),
                        names()
                    ));
                }
            };
            if !literal.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut literal)));
            }
            parts.push(part);
            rest = &after[end + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Self { parts })
    }

    /// The template with its placeholders filled in.
    pub fn render(&self, values: TemplateValues<'_>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Pipeline => out.push_str(values.pipeline),
                Part::Daemon => out.push_str(values.daemon),
            }
        }
        out
    }

    /// The literal text (placeholders left out), for checks on the characters written.
    pub fn literal_text(&self) -> String {
        self.parts
            .iter()
            .filter_map(|part| match part {
                Part::Text(text) => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }
}

fn names() -> String {
    PLACEHOLDERS
        .iter()
        .map(|(name, _)| format!("{{{name}}}"))
        .collect::<Vec<_>>()
        .join(" and ")
}

/// Why `template` cannot be an MQTT topic to publish on, if it cannot: it must not be empty,
/// hold a wildcard (`+`, `#`) or a NUL, or start with `$` (the broker's own topics).
pub fn mqtt_topic_problem(template: &str) -> Option<String> {
    let parsed = match Template::parse(template) {
        Ok(parsed) => parsed,
        Err(message) => return Some(message),
    };
    let literal = parsed.literal_text();
    if template.trim().is_empty() {
        return Some("must not be empty".into());
    }
    if literal.contains(['+', '#']) {
        return Some(format!(
            "'{}' holds an MQTT wildcard ('+' or '#'), which subscribers use; a topic to publish on cannot",
            super::limits::shown(template)
        ));
    }
    if literal.contains('\0') {
        return Some("must not hold a NUL character".into());
    }
    if template.starts_with('$') {
        return Some(format!(
            "'{}' starts with '$', which brokers keep for their own topics ($SYS)",
            super::limits::shown(template)
        ));
    }
    if template.len() > MAX_MQTT_TOPIC {
        return Some(format!(
            "is {} bytes long; at most {MAX_MQTT_TOPIC} are allowed",
            template.len()
        ));
    }
    None
}

/// Longest topic this daemon accepts (MQTT allows 65535 bytes; nobody means that).
const MAX_MQTT_TOPIC: usize = 1024;

/// Why `template` cannot be a Kafka topic, if it cannot: Kafka takes 1 to 249 of
/// `a-z A-Z 0-9 . _ -` (the placeholders' values, names, use only those).
pub fn kafka_topic_problem(template: &str) -> Option<String> {
    let parsed = match Template::parse(template) {
        Ok(parsed) => parsed,
        Err(message) => return Some(message),
    };
    if template.is_empty() {
        return Some("must not be empty".into());
    }
    let literal = parsed.literal_text();
    if let Some(bad) = literal
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Some(format!(
            "'{}' holds '{bad}'; a Kafka topic takes only letters, digits, '.', '_' and '-'",
            super::limits::shown(template)
        ));
    }
    if template.len() > 249 {
        return Some(format!(
            "is {} characters long; Kafka allows at most 249",
            template.len()
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALUES: TemplateValues<'static> = TemplateValues {
        pipeline: "door",
        daemon: "box-1",
    };

    #[test]
    fn placeholders_are_filled_in() {
        let template = Template::parse("visiond/{daemon}/{pipeline}/results").unwrap();
        assert_eq!(template.render(VALUES), "visiond/box-1/door/results");
        assert_eq!(Template::parse("plain").unwrap().render(VALUES), "plain");
        assert_eq!(
            Template::parse("{pipeline}").unwrap().render(VALUES),
            "door"
        );
    }

    #[test]
    fn bad_templates_say_why() {
        let unknown = Template::parse("visiond/{camera}/results").unwrap_err();
        assert!(
            unknown.contains("'{camera}' is not a placeholder"),
            "{unknown}"
        );
        assert!(unknown.contains("{pipeline} and {daemon}"), "{unknown}");
        assert!(
            Template::parse("a/{pipeline")
                .unwrap_err()
                .contains("never closed")
        );
        assert!(Template::parse("a}b").unwrap_err().contains("without its"));
    }

    #[test]
    fn topics_are_checked_for_their_protocol() {
        assert_eq!(mqtt_topic_problem("visiond/{pipeline}/results"), None);
        assert!(
            mqtt_topic_problem("visiond/+/results")
                .unwrap()
                .contains("wildcard")
        );
        assert!(
            mqtt_topic_problem("visiond/#")
                .unwrap()
                .contains("wildcard")
        );
        assert!(mqtt_topic_problem("$SYS/x").unwrap().contains("'$'"));
        assert!(mqtt_topic_problem("").unwrap().contains("empty"));
        assert_eq!(kafka_topic_problem("visiond.{pipeline}.results"), None);
        assert!(
            kafka_topic_problem("visiond/results")
                .unwrap()
                .contains("'/'")
        );
    }
}
