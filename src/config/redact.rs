//! Credentials out of everything a person or a log shipper reads: the one place that knows what
//! a secret looks like in a URI, a gst-launch description or a GStreamer message.
//!
//! Every source, sink and GStreamer error that is logged, shown in `/api/pipelines` or
//! `/readyz`, printed in the summary or by `visiond check` passes through here first. Two
//! shapes of secret are found:
//! - a URI's userinfo (`rtsp://admin:PASSWORD@camera/stream`). Cameras' passwords hold `/`, `@`
//!   and `:` unescaped, so the userinfo runs to the *last* `@` of the URI, never to its first
//!   `/`: a path with an `@` in it is hidden too, which costs a little reading but never a
//!   password;
//! - the value of a password-like property or query parameter (`user-pw=`, `proxy-pw=`,
//!   `password=`, `passphrase=`, `token=`, `api-key=`, ...), quoted or not.
//!
//! Each secret becomes `***`; a user name stays, so an operator can still tell which account
//! a camera was asked with.

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// `text` (a gst-launch description, a GStreamer error, a message quoting either) with every
/// credential it carries masked. In free text a URI ends at whitespace or at the quote that
/// opened it.
pub fn text(text: &str) -> String {
    let mut secrets = Vec::new();
    uri_secrets(text, &mut secrets);
    property_secrets(text, &mut secrets);
    gst_set_property_secrets(text, &mut secrets);
    mask(text, secrets)
}

/// `uri` (all of it one URI, as a `source.uri` is) with its password and password-like query
/// parameters masked. Unlike [`text`], a space does not end it.
pub fn uri(uri: &str) -> String {
    let mut secrets = Vec::new();
    if let Some(scheme_end) = uri.find("://") {
        userinfo_secret(uri, scheme_end + 3, uri.len(), &mut secrets);
    }
    property_secrets(uri, &mut secrets);
    mask(uri, secrets)
}

/// Whether a property or parameter called `name` holds a secret. Deliberately wide: a masked
/// value that was not secret costs a little reading, a missed one costs a camera.
fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["pw", "passw", "passphrase", "secret", "token", "credential"]
        .iter()
        .any(|part| name.contains(part))
        || name.ends_with("key")
}

/// Byte ranges of `text` to mask.
type Secrets = Vec<std::ops::Range<usize>>;

/// Every `scheme://` in `text`, with the userinfo of its URI.
fn uri_secrets(text: &str, secrets: &mut Secrets) {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(found) = text[from..].find("://") {
        let separator = from + found;
        let scheme_start = text[..separator]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |i| i + 1);
        let authority = separator + 3;
        let end = if scheme_start == separator {
            authority // "://" with no scheme before it: not a URI
        } else {
            match scheme_start.checked_sub(1).map(|i| bytes[i]) {
                Some(quote @ (b'"' | b'\'')) => quoted_end(text, authority, quote),
                _ => text[authority..]
                    .find(|c: char| c.is_whitespace() || c == '"' || c == '\'')
                    .map_or(text.len(), |i| authority + i),
            }
        };
        userinfo_secret(text, authority, end, secrets);
        from = end.max(authority);
    }
}

/// The userinfo of the URI whose authority starts at `start` and which ends at `end`: up to
/// the last `@`. `user:password` keeps its user; anything stranger is masked whole.
fn userinfo_secret(text: &str, start: usize, end: usize, secrets: &mut Secrets) {
    let Some(at) = text[start..end].rfind('@').map(|i| start + i) else {
        return;
    };
    let userinfo = &text[start..at];
    let plain_user = |user: &str| !user.contains(['/', '?', '#', '\\']);
    match userinfo.find(':') {
        Some(colon) if plain_user(&userinfo[..colon]) => secrets.push(start + colon + 1..at),
        None if plain_user(userinfo) => {} // a user name alone: nothing secret
        _ => secrets.push(start..at),
    }
}

/// Where a value quoted with `quote` and starting at `start` ends (at its closing quote, or at
/// the end of the text); a backslash escapes the next character, as gst-launch reads it.
fn quoted_end(text: &str, start: usize, quote: u8) -> usize {
    let bytes = text.as_bytes();
    let mut i = start;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b if b == quote => return i,
            _ => i += 1,
        }
    }
    text.len()
}

/// `name=value` where the name is password-like: the property of a gst-launch description
/// (`user-pw="..."`, `proxy-pw=...`) or a URI's query parameter (`?passphrase=...&`).
fn property_secrets(text: &str, secrets: &mut Secrets) {
    let bytes = text.as_bytes();
    for (equals, _) in text.match_indices('=') {
        // The name: the word before `=` (gst-launch allows spaces around it).
        let name_end = text[..equals].trim_end().len();
        let name_start = text[..name_end]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
            .map_or(0, |i| i + 1);
        if name_start == name_end || !is_secret_name(&text[name_start..name_end]) {
            continue;
        }
        let in_query = name_start > 0 && matches!(bytes[name_start - 1], b'?' | b'&' | b';');
        let value_start =
            equals + 1 + (text[equals + 1..].len() - text[equals + 1..].trim_start().len());
        let value = match bytes.get(value_start) {
            Some(&quote @ (b'"' | b'\'')) => {
                value_start + 1..quoted_end(text, value_start + 1, quote)
            }
            _ => {
                let end = text[value_start..]
                    .find(|c: char| {
                        c.is_whitespace()
                            || c == '"'
                            || c == '\''
                            || (in_query && matches!(c, '&' | '#'))
                    })
                    .map_or(text.len(), |i| value_start + i);
                value_start..end
            }
        };
        if !value.is_empty() {
            secrets.push(value);
        }
    }
}

/// GStreamer's own parse error quotes the value it could not set:
/// `could not set property "user-pw" in element "src" to "VALUE"`.
fn gst_set_property_secrets(text: &str, secrets: &mut Secrets) {
    const LEAD: &str = "could not set property \"";
    let mut from = 0;
    while let Some(found) = text[from..].find(LEAD) {
        let name_start = from + found + LEAD.len();
        let Some(name_len) = text[name_start..].find('"') else {
            return;
        };
        let name = &text[name_start..name_start + name_len];
        from = name_start + name_len;
        if !is_secret_name(name) {
            continue;
        }
        if let Some(to) = text[from..].find(" to \"") {
            let value_start = from + to + " to \"".len();
            let end = text[value_start..]
                .rfind('"')
                .map_or(text.len(), |i| value_start + i);
            secrets.push(value_start..end);
            from = end;
        }
    }
}

/// `text` with each range in `secrets` (overlapping or not) replaced by [`MASK`].
fn mask(text: &str, mut secrets: Secrets) -> String {
    if secrets.is_empty() {
        return text.to_string();
    }
    secrets.sort_by_key(|range| range.start);
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for range in secrets {
        if range.end <= copied {
            continue;
        }
        if range.start >= copied {
            out.push_str(&text[copied..range.start]);
            out.push_str(MASK);
        }
        copied = range.end;
    }
    out.push_str(&text[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWORD: &str = "pa/ss@w:0rd";

    #[test]
    fn a_uri_password_is_masked_up_to_the_last_at() {
        assert_eq!(
            uri("rtsp://admin:s3cret@cam.local:554/stream"),
            "rtsp://admin:***@cam.local:554/stream"
        );
        assert_eq!(uri("rtsp://cam.local/stream"), "rtsp://cam.local/stream");
        assert_eq!(
            uri("rtsp://viewer@cam.local/s"),
            "rtsp://viewer@cam.local/s"
        );
        assert_eq!(
            uri(&format!("rtsp://admin:{PASSWORD}@cam/stream")),
            "rtsp://admin:***@cam/stream"
        );
        // Spaces are no end inside a whole URI.
        assert_eq!(uri("rtsp://a:b c@cam/x"), "rtsp://a:***@cam/x");
        // A user name that cannot be one (the `@` was the path's) hides everything before it.
        assert_eq!(uri("rtsp://cam/live@main"), "rtsp://***@main");
        assert_eq!(uri("rtsp://to/ken@cam/x"), "rtsp://***@cam/x");
        assert_eq!(
            uri("srt://relay:9000?streamid=cam&passphrase=abc/def&latency=200"),
            "srt://relay:9000?streamid=cam&passphrase=***&latency=200"
        );
        // An `@` in the query reads as the end of a userinfo: more is hidden, nothing leaks.
        let shown = uri("srt://relay:9000?passphrase=abc/def@x&latency=200");
        assert!(!shown.contains("abc"), "{shown}");
    }

    #[test]
    fn launch_descriptions_lose_passwords_quoted_or_not() {
        let launch = format!(
            "rtspsrc location=\"rtsp://admin:{PASSWORD}@10.0.0.2/s\" user-id=admin user-pw=\"{PASSWORD}\" proxy-pw = plain ! decodebin"
        );
        assert_eq!(
            text(&launch),
            "rtspsrc location=\"rtsp://admin:***@10.0.0.2/s\" user-id=admin user-pw=\"***\" proxy-pw = *** ! decodebin"
        );
        assert_eq!(
            text(&format!(
                "souphttpsrc location=http://u:{PASSWORD}@h/x ! fakesink"
            )),
            "souphttpsrc location=http://u:***@h/x ! fakesink"
        );
        assert_eq!(
            text("srtsink uri=\"srt://h:1?passphrase=0123456789\" password='a b' api-key=k"),
            "srtsink uri=\"srt://h:1?passphrase=***\" password='***' api-key=***"
        );
        // Escaped quotes stay inside the value.
        assert_eq!(text(r#"x user-pw="a\"b c" y"#), r#"x user-pw="***" y"#);
        // Nothing secret, nothing changed.
        let plain = "videotestsrc is-live=true ! x264enc key-int-max=30 pass=qual ! fakesink";
        assert_eq!(text(plain), plain);
    }

    #[test]
    fn gstreamer_messages_lose_what_they_echo() {
        assert_eq!(
            text(&format!(
                "/GstPipeline:pipeline0/GstSoupHTTPSrc:src: Error parsing URL. (debug: gstsouphttpsrc.c(1722): build_message (): URL: http://admin:{PASSWORD}@127.0.0.1:1/stream)"
            )),
            "/GstPipeline:pipeline0/GstSoupHTTPSrc:src: Error parsing URL. (debug: gstsouphttpsrc.c(1722): build_message (): URL: http://admin:***@127.0.0.1:1/stream)"
        );
        assert_eq!(
            text(&format!(
                "could not set property \"user-pw\" in element \"src\" to \"{PASSWORD}\""
            )),
            "could not set property \"user-pw\" in element \"src\" to \"***\""
        );
        assert_eq!(
            text("could not set property \"latency\" in element \"src\" to \"x\""),
            "could not set property \"latency\" in element \"src\" to \"x\""
        );
    }
}
